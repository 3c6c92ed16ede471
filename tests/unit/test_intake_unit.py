"""Pure parts of the intake: session cookies, CSRF, password and key hashing, the input walker."""

from __future__ import annotations

import zipfile
from pathlib import Path

from ingest.accounts import KEY_PREFIX, check_password, hash_api_key, hash_password
from ingest.api.sessions import Session, SessionSigner, csrf_ok
from ingest.sources import collect


def test_session_cookie_round_trip_and_tampering() -> None:
    signer = SessionSigner(b"k" * 32, ttl_s=60)
    s = signer.new("alice")
    value = signer.dumps(s)
    assert signer.loads(value) == s
    payload, sig = value.split(".")
    forged = SessionSigner(b"x" * 32, 60).dumps(Session("mallory", s.csrf, s.expires))
    assert signer.loads(forged) is None
    assert signer.loads(payload + "." + sig[:-2] + "AA") is None
    assert signer.loads("garbage") is None and signer.loads(None) is None
    expired = Session("alice", s.csrf, 1)
    assert signer.loads(signer.dumps(expired)) is None


def test_csrf_token_must_match_the_session() -> None:
    s = SessionSigner(b"k" * 32, 60).new(None)
    assert csrf_ok(s, s.csrf)
    assert (
        not csrf_ok(s, None)
        and not csrf_ok(s, "")
        and not csrf_ok(s, s.csrf + "x")
        and not csrf_ok(None, s.csrf)
    )


def test_password_hash_is_salted_scrypt() -> None:
    a, b = hash_password("correct horse"), hash_password("correct horse")
    assert a != b and a.startswith("scrypt$16384$8$1$")
    assert check_password("correct horse", a) and not check_password("wrong horse", a)
    assert not check_password("x", "not-a-hash") and not check_password("x", "bcrypt$1$2$3$4$5")


def test_api_key_hash_is_not_the_key() -> None:
    key = f"{KEY_PREFIX}_abc_secret"
    assert hash_api_key(key) != key and len(hash_api_key(key)) == 64


def test_collect_reports_every_kind_of_bad_input(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "x.png").write_bytes(b"png?")
    (tmp_path / "imgs" / "y.md").write_text("x")
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("dir/", "")
        zf.writestr("dir/p.jpg", b"jpg?")
        zf.writestr("notes.txt", "x")
    (tmp_path / "broken.zip").write_bytes(b"PK not really")
    found = collect([tmp_path / n for n in ("empty", "docs", "imgs", "a.zip", "broken.zip", "nope")], 1000)
    assert [e.name for e in found.entries] == [str(tmp_path / "imgs" / "x.png"), f"{archive}!dir/p.jpg"]
    assert found.entries[1].read() == b"jpg?"
    text = "\n".join(found.problems)
    for expected in (
        "empty: no images found (empty folder)",
        "docs: no images found (1 files, none an image)",
        "imgs: skipped 1 files that are not images",
        "a.zip!notes.txt: skipped, not an image file",
        "broken.zip: not a readable zip archive",
        "nope: no such file or folder",
    ):
        assert expected in text, text
