"""Real ``python -m scorer run`` processes of one consumer group, and the policy that churns them.

Used by ``harness.churn``. Each process gets its own Kafka ``client_id`` so the group's member list
(``describe_groups``) tells which process has joined; the churner only stops a process when another one is
in the group, so at least one member always keeps consuming.
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT_S = 60.0  # a graceful stop finishes one batch; far longer means the stop path is broken
# Which leaves are SIGKILLs: leave number n (from 0) is a kill when KILL_PATTERN[n % 3] says so. A fixed
# pattern rather than a coin, so even a short run has both kinds.
KILL_PATTERN = (False, True, False)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the harness dies, so no scorer outlives a killed run. Only
    the main thread starts scorers, the thread the kernel ties this to (as ``tests/chaos.py`` does)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


@dataclass(frozen=True)
class ScorerSpec:
    """How every scorer process of the run is started."""

    group: str
    topic: str
    run_id: str
    log_dir: Path
    session_timeout_ms: int = 6000
    device: str = "cpu"
    max_batch: int | None = None
    env_file: Path | None = None

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "scorer", "run", "--group", self.group, "--topic", self.topic]
        argv += ["--metrics-port", "0", "--device", self.device]
        if self.max_batch:
            argv += ["--max-batch", str(self.max_batch)]
        return argv

    def env(self, client_id: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            # A model hot-swap mid-run would give some images a second row under another version.
            CIFAKE_SCORER_FOLLOW_MODELS="false",
            # Up to three scorers share the host's cores with the broker: one intra-op thread each.
            CIFAKE_SCORER_THREADS="1",
            # A SIGKILLed member's partitions wait this long for a new owner; the 30 s default would only
            # stretch the run, the delivery guarantees do not depend on it.
            CIFAKE_KAFKA__SESSION_TIMEOUT_MS=str(self.session_timeout_ms),
            CIFAKE_KAFKA__CLIENT_ID=client_id,
        )
        if self.env_file is not None:
            env["CIFAKE_ENV_FILE"] = str(self.env_file)
        return env


@dataclass
class ScorerProcess:
    """One scorer process: started, maybe signalled, then reaped."""

    name: str
    client_id: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    signalled: str | None = None  # "term" or "kill" once the churner stopped it
    signalled_at: float | None = None
    joined: bool = False  # seen in the group's member list at least once
    returncode: int | None = None

    def running(self) -> bool:
        return self.returncode is None and self.proc.poll() is None

    def send(self, how: str) -> None:
        self.signalled, self.signalled_at = how, time.monotonic()
        self.proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


@dataclass
class Events:
    """What the churner did, for the result file."""

    joins: int = 0
    graceful_leaves: int = 0
    kills: int = 0
    deferred: int = 0  # ticks that wanted a leave but no other member had joined yet
    unexpected_exits: list[dict[str, object]] = field(default_factory=list)
    failed_graceful_stops: list[dict[str, object]] = field(default_factory=list)
    timeline: list[dict[str, object]] = field(default_factory=list)


class ScorerPool:
    """Starts, stops and reaps the scorer processes; ``members`` reports the group's client ids."""

    def __init__(self, spec: ScorerSpec, members: Callable[[], set[str]], t0: float) -> None:
        self.spec = spec
        self.members = members
        self.t0 = t0
        self.procs: list[ScorerProcess] = []
        self.events = Events()

    def _note(self, what: str, p: ScorerProcess, **extra: object) -> None:
        at = round(time.monotonic() - self.t0, 2)
        self.events.timeline.append({"t": at, "event": what, "scorer": p.name, **extra})
        logger.info("t=%.1fs %s %s %s", at, what, p.name, extra or "")

    def start(self) -> ScorerProcess:
        n = len(self.procs) + 1
        name, client_id = f"scorer{n}", f"churn-{self.spec.run_id}-s{n}"
        log_path = self.spec.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                self.spec.argv(),
                env=self.spec.env(client_id),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        p = ScorerProcess(name, client_id, proc, log_path, time.monotonic())
        self.procs.append(p)
        self.events.joins += 1
        self._note("start", p, pid=proc.pid)
        return p

    def alive(self) -> list[ScorerProcess]:
        """Running and not asked to stop."""
        return [p for p in self.procs if p.signalled is None and p.running()]

    def refresh(self) -> None:
        """Mark members that have joined; reap exits; escalate graceful stops that hang."""
        members = self.members()
        for p in self.procs:
            if p.client_id in members:
                p.joined = True
            if p.returncode is None and p.proc.poll() is not None:
                self._reaped(p)
            elif (
                p.returncode is None
                and p.signalled == "term"
                and time.monotonic() - (p.signalled_at or 0) > STOP_TIMEOUT_S
            ):
                logger.error("%s still running %.0fs after SIGTERM; killing it", p.name, STOP_TIMEOUT_S)
                p.proc.kill()  # reaped on the next refresh, as a failed graceful stop (rc -9)

    def _reaped(self, p: ScorerProcess) -> None:
        p.returncode = p.proc.returncode
        self._note("exit", p, rc=p.returncode)
        if p.signalled is None:  # it crashed, or a signal from outside the harness stopped it
            self.events.unexpected_exits.append({"scorer": p.name, "rc": p.returncode, "log": p.tail()})
            logger.error("%s exited without being stopped (rc %s):\n%s", p.name, p.returncode, p.tail())
        elif p.signalled == "term" and p.returncode != 0 and not self._stopped_while_starting(p):
            self.events.failed_graceful_stops.append({"scorer": p.name, "rc": p.returncode, "log": p.tail()})

    @staticmethod
    def _stopped_while_starting(p: ScorerProcess) -> bool:
        """SIGTERM before the loop installed its handlers (the model still loading) ends the process by the
        signal's default action: it had no batch to finish, so that is a clean stop too."""
        return not p.joined and p.returncode == -signal.SIGTERM

    def leave(self, victim: ScorerProcess) -> None:
        n = self.events.graceful_leaves + self.events.kills
        how = "kill" if KILL_PATTERN[n % len(KILL_PATTERN)] else "term"
        victim.send(how)
        if how == "kill":
            self.events.kills += 1
            victim.proc.wait(timeout=30)
            self._reaped(victim)
        else:
            self.events.graceful_leaves += 1
        self._note("sigkill" if how == "kill" else "sigterm", victim)

    def stop_all(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every running process and wait for it (SIGKILL past ``timeout``)."""
        for p in self.procs:
            if p.running() and p.signalled is None:
                p.send("term")
                self._note("final-sigterm", p)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.events.failed_graceful_stops.append({"scorer": p.name, "why": "timeout at the end"})
                p.proc.kill()
                p.proc.wait(timeout=30)
        self.refresh()


class Churner:
    """Every ``min_gap_s``..``max_gap_s`` seconds one member joins or leaves, between 1 and ``most`` alive.

    A leave only hits a process that is in the group while another one is too, so there is always a member
    to take its partitions; with fewer than two alive the churner always starts one.
    """

    def __init__(self, pool: ScorerPool, most: int, min_gap_s: float, max_gap_s: float, seed: int) -> None:
        self.pool, self.most = pool, most
        self.min_gap_s, self.max_gap_s = min_gap_s, max_gap_s
        self.rng = random.Random(seed)

    def next_gap(self) -> float:
        return self.rng.uniform(self.min_gap_s, self.max_gap_s)

    def tick(self) -> None:
        self.pool.refresh()
        alive = self.pool.alive()
        if len(alive) < 2 or (len(alive) < self.most and self.rng.random() < 0.5):
            self.pool.start()
            return
        joined = [p for p in alive if p.joined]
        if len(joined) < 2:
            self.pool.events.deferred += 1  # the newcomer has not joined yet: try again next tick
            return
        self.pool.leave(self.rng.choice(joined))
