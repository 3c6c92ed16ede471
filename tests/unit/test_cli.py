"""``ingest.cli``, the scaffold every ``python -m <package>`` uses, and the packages' command lists."""

from __future__ import annotations

import argparse
import json

import pytest

from explainer.__main__ import COMMANDS as EXPLAINER
from ingest import cli
from ingest.__main__ import COMMANDS as INGEST
from ingest.intake import IntakeSettings
from retrainer.__main__ import COMMANDS as RETRAINER
from scorer.__main__ import COMMANDS as SCORER


def _echo(sub: cli.SubParsers) -> cli.Handler:
    p = sub.add_parser("echo")
    p.add_argument("word")
    return lambda args: cli.print_result({"word": args.word})


def _two(sub: cli.SubParsers) -> cli.Handler:
    sub.add_parser("one")
    sub.add_parser("two")
    return lambda args: 10 if args.command == "one" else 20


def test_main_dispatches_to_the_handler_of_the_chosen_command(capsys: pytest.CaptureFixture[str]) -> None:
    started: list[str] = []
    assert cli.main("prog", None, [_echo, _two], ["echo", "hi"], before=lambda: started.append("x")) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"word": "hi"}
    assert started == ["x"]
    assert cli.main("prog", None, [_echo, _two], ["one"]) == 10  # one function may add several commands
    assert cli.main("prog", None, [_echo, _two], ["--log-level", "debug", "two"]) == 20


def test_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main("prog", None, [_echo], ["nope"])
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_flags_that_were_given_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIFAKE_INTAKE_PORT", "9001")
    monkeypatch.setenv("CIFAKE_INTAKE_TOPIC", "from.env")
    args = argparse.Namespace(port=None, topic="from.flag")
    got = cli.settings_from(IntakeSettings, args, port="port", topic="topic")
    assert (got.port, got.topic) == (9001, "from.flag")


@pytest.mark.parametrize(
    ("commands", "names"),
    [
        (INGEST, {"smoke", "serve", "keys", "moderators", "submit", "dlq"}),
        (SCORER, {"bench-model", "run", "score"}),
        (EXPLAINER, {"run", "score"}),
        (RETRAINER, {"train", "evaluate", "models", "known", "run", "worker", "retrain-now"}),
    ],
)
def test_every_package_registers_its_commands_once(commands: list[cli.Command], names: set[str]) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    for add in commands:
        assert callable(add(sub))
    assert set(sub.choices) == names
