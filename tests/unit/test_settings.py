"""Settings come from the env file and the environment, in that priority, with secrets masked."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.settings import ServiceSettings, StackSettings, describe, load


def test_env_file_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / "env"
    env.write_text(
        "CIFAKE_KAFKA__BOOTSTRAP_SERVERS=127.0.0.1:1\n"
        "CIFAKE_S3__ACCESS_KEY=ak\nCIFAKE_S3__SECRET_KEY=very-secret\n"
        "CIFAKE_PG__DSN=postgresql://u:pw-secret@h:1/d\n"
    )
    monkeypatch.setenv("CIFAKE_ENV_FILE", str(env))
    monkeypatch.setenv("CIFAKE_S3__ENDPOINT", "10.0.0.1:9000")
    s = load(StackSettings)
    assert s.kafka.bootstrap_servers == "127.0.0.1:1"
    assert s.s3.endpoint == "10.0.0.1:9000"
    assert s.s3.secret_key.get_secret_value() == "very-secret"
    text = describe(s)
    assert "very-secret" not in text and "pw-secret" not in text


def test_missing_env_file_falls_back_to_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFAKE_ENV_FILE", str(tmp_path / "absent"))
    monkeypatch.delenv("CIFAKE_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    assert load(StackSettings).kafka.bootstrap_servers == "127.0.0.1:19092"


def test_service_settings_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFAKE_SERVICE_POLL_TIMEOUT_MS", "0")
    with pytest.raises(ValueError):
        ServiceSettings()


def test_breaker_settings_reach_the_service_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from scorer.service import ScorerSettings

    monkeypatch.setenv("CIFAKE_SCORER_BREAKER_PROBE_S", "5")
    monkeypatch.setenv("CIFAKE_SCORER_UNEXPECTED_RETRIES", "0")
    s = ScorerSettings()
    assert (s.breaker_probe_s, s.unexpected_retries, s.breaker_threshold) == (5.0, 0, 2)
    monkeypatch.setenv("CIFAKE_SCORER_BREAKER_THRESHOLD", "0")
    with pytest.raises(ValueError):
        ScorerSettings()


def test_every_loop_setting_reaches_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """What an operator sets for a service (CIFAKE_SCORER_*) is what its consumer loop runs with."""
    from ingest.loop import LoopConfig
    from ingest.service import loop_config
    from scorer.service import ScorerSettings

    values = {
        "POLL_TIMEOUT_MS": "777",
        "BACKOFF_INITIAL_S": "0.25",
        "BACKOFF_MAX_S": "9",
        "UNEXPECTED_RETRIES": "4",
        "BREAKER_THRESHOLD": "3",
        "BREAKER_MIN_RECORDS": "5",
        "BREAKER_PROBE_S": "7",
    }
    for name, value in values.items():
        monkeypatch.setenv(f"CIFAKE_SCORER_{name}", value)
    config = loop_config("scorer", ScorerSettings(), 64, 15)
    got = {name: getattr(config, name.lower()) for name in values}
    assert got == {name: type(getattr(LoopConfig("x"), name.lower()))(v) for name, v in values.items()}
    assert (config.service, config.max_batch, config.max_wait_ms) == ("scorer", 64, 15)
    assert config.poll_timeout_ms != LoopConfig("x").poll_timeout_ms  # the test sets non-defaults
