"""``python -m harness.demo_console``: the last step of ``make demo``.

Creates (or resets) the demo moderator with a generated password, starts the intake service detached
unless this state dir's one is already running (pid in ``<state>/run/intake.pid``, log in
``<state>/intake.log``; ``deploy/stack down`` stops it), waits for ``/healthz`` and prints the
console's URL and the credentials.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from harness.wait import wait_until
from ingest.accounts import generate_password, set_moderator
from ingest.db import connect
from ingest.intake import IntakeSettings
from ingest.settings import StackSettings

ROOT = Path(__file__).resolve().parents[1]


def state_dir() -> Path:
    return Path(os.environ.get("CIFAKE_STACK_DIR", ROOT / ".stack")).resolve()


def running_pid(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` when it is alive and is this pid file's ``ingest serve``."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError):
        return None
    return pid if f"-m ingest serve --pid-file {pid_file}" in cmdline else None


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_detached(settings: IntakeSettings, timeout: float = 90.0) -> tuple[int, str]:
    state = state_dir()
    pid_file = state / "run" / "intake.pid"
    log_file = state / "intake.log"
    url = f"http://{settings.host}:{settings.port}"
    pid = running_pid(pid_file)
    if pid is None:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ingest", "serve", "--pid-file", str(pid_file)],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pid = proc.pid
        tmp = pid_file.with_name(pid_file.name + ".tmp")
        tmp.write_text(f"{pid}\n")
        tmp.replace(pid_file)
        with contextlib.suppress(TimeoutError):  # the log's tail below says more than the timeout
            wait_until(lambda: proc.poll() is not None or _healthy(url), timeout, "the intake", 0.25)
        if not _healthy(url):
            tail = log_file.read_text(errors="replace").splitlines()[-20:]
            raise SystemExit("demo-console: the intake did not start:\n" + "\n".join(tail))
    return pid, url


def run_demo_console(stack: StackSettings, settings: IntakeSettings, name: str) -> int:
    password = generate_password()
    with connect(stack.pg) as conn:
        set_moderator(conn, name, password, replace=True)
    conn.close()
    pid, url = start_detached(settings)
    base = settings.public_url or url
    log = state_dir() / "intake.log"
    print(f"\nreview console: {base}/review   (API docs: {base}/docs; pid {pid}, log {log})")
    print(f"demo moderator: name {name}   password {password}")
    print("stop it with `deploy/stack down`")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ingest.cli import configure_logging
    from ingest.intake import IntakeSettings
    from ingest.settings import StackSettings, load

    p = argparse.ArgumentParser(
        prog="python -m harness.demo_console",
        description="(make demo) demo moderator + detached server, print URL",
    )
    p.add_argument("--name", default="demo")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    configure_logging(args.log_level)
    return run_demo_console(load(StackSettings), load(IntakeSettings), args.name)


if __name__ == "__main__":
    raise SystemExit(main())
