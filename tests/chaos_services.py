"""The chaos run's service processes (tests/chaos.py): each a ``python -m <module> run`` that can be killed,
restarted and read back from its log, and that dies with the chaos process."""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
from pathlib import Path

logger = logging.getLogger("chaos")


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the chaos process dies, so no scorer outlives a killed run.
    (Services are started from the main thread only, which is what the kernel ties this to.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


class Service:
    """One ``python -m <module> run`` process; its output goes to ``<log_dir>/<name>-<n>.log``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env, self.log_dir = name, argv, env, log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path = log_dir / f"{name}-0.log"

    def start(self) -> None:
        self.starts += 1
        self.log_path = self.log_dir / f"{self.name}-{self.starts}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=Path(__file__).resolve().parents[1],
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )
        logger.info("%s started (pid %d)", self.name, self.proc.pid)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if not self.running():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""
