"""A `deploy/stack` instance of one's own: a state dir and free ports, so faults never touch the shared stack.

Used by the chaos run (``python -m tests.chaos``): it starts one, kills services by the pid files in
``<state>/run`` and brings them back with ``deploy/stack up``, which starts only what is not running.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from harness.wait import wait_until
from ingest.settings import KafkaSettings, PostgresSettings, S3Settings, StackSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
STACK = REPO_ROOT / "deploy" / "stack"
PORT_VARS = (
    "CIFAKE_STACK_KAFKA_PORT",
    "CIFAKE_STACK_KAFKA_CONTROLLER_PORT",
    "CIFAKE_STACK_MINIO_PORT",
    "CIFAKE_STACK_MINIO_CONSOLE_PORT",
    "CIFAKE_STACK_PG_PORT",
)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports below the kernel's ephemeral range.

    A port from the ephemeral range (what binding port 0 returns) could be taken after a fault by the
    clients themselves: while a killed broker's port has no listener, kafka-python reconnects to it over and
    over from ephemeral source ports, and a source port equal to the destination connects the socket to
    itself (TCP simultaneous open). Ports the kernel never hands out as source ports cannot be taken that
    way. (The CI failure that prompted this recurred below the range: its cause was the restart racing the
    killed JVM's exit, see ``alive``.)"""
    rng = random.Random()
    high = max(10_001, min(_ephemeral_low(), 32_768))
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(10_000, high)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def alive(pid: int) -> bool:
    """A process with at least one thread that has not exited yet.

    The main thread alone is not enough: after SIGKILL a JVM's main thread turns zombie while its other
    threads are still exiting, and the process's sockets close only when the last of them is gone. A
    restart in that window found the killed broker's port still listening (a CI chaos run failed so)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return False
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited (and reaped) since the listing
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            return True
    return False


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def _port(address: str) -> str:
    return address.rsplit(":", 1)[1].split("/", 1)[0]


@dataclass
class PrivateStack:
    state_dir: Path
    env: dict[str, str]  # the environment `deploy/stack` runs with (state dir, ports)
    owned: bool  # created here: `reset` at the end unless kept

    @classmethod
    def create(cls, partitions: int | None = None) -> PrivateStack:
        # Not a 0700 temp dir: as root, PostgreSQL runs as the `postgres` user and must reach the dir.
        state_dir = Path(tempfile.mkdtemp(prefix="cifake-chaos-stack-"))
        state_dir.chmod(0o755)
        env = cls._base_env(state_dir)
        env.update(zip(PORT_VARS, map(str, free_ports(len(PORT_VARS))), strict=True))
        if partitions:
            env["CIFAKE_PARTITIONS"] = str(partitions)
        return cls(state_dir, env, owned=True)

    @classmethod
    def existing(cls, state_dir: Path) -> PrivateStack:
        """A running stack's dir: its ports are read back from what it wrote (env file, configs, cmdlines),
        since `deploy/stack up` must be given the same ports to restart a service."""
        state_dir = state_dir.resolve()
        env = cls._base_env(state_dir)
        values = read_env_file(state_dir / "env")
        env["CIFAKE_STACK_KAFKA_PORT"] = ",".join(
            _port(a) for a in values["CIFAKE_KAFKA__BOOTSTRAP_SERVERS"].split(",")
        )
        env["CIFAKE_STACK_MINIO_PORT"] = _port(values["CIFAKE_S3__ENDPOINT"])
        env["CIFAKE_STACK_PG_PORT"] = _port(values["CIFAKE_PG__DSN"])
        controllers = []
        for props in sorted((state_dir / "kafka").glob("node-*/server.properties")):
            m = re.search(r"^listeners=.*CONTROLLER://([^,\s]+)", props.read_text(), re.M)
            if m:
                controllers.append(_port(m.group(1)))
        if controllers:
            env["CIFAKE_STACK_KAFKA_CONTROLLER_PORT"] = ",".join(controllers)
        stack = cls(state_dir, env, owned=False)
        minio = stack.pid("minio")
        if minio is not None:
            args = Path(f"/proc/{minio}/cmdline").read_text().split("\0")
            if "--console-address" in args:
                env["CIFAKE_STACK_MINIO_CONSOLE_PORT"] = _port(args[args.index("--console-address") + 1])
        return stack

    @staticmethod
    def _base_env(state_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIFAKE_")}
        env.update(
            CIFAKE_STACK_DIR=str(state_dir), CIFAKE_PYTHON=os.environ.get("CIFAKE_PYTHON", sys.executable)
        )
        if "CIFAKE_CACHE_DIR" in os.environ:
            env["CIFAKE_CACHE_DIR"] = os.environ["CIFAKE_CACHE_DIR"]
        return env

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(STACK), *args],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def up(self, timeout: float = 900) -> None:
        """Start whatever is not running and wait until every service is healthy."""
        result = self.run("up", timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"deploy/stack up failed (exit {result.returncode}):\n{result.stderr[-3000:]}")

    def reset(self) -> None:
        result = self.run("reset", timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"deploy/stack reset failed:\n{result.stderr[-3000:]}")

    @property
    def env_file(self) -> Path:
        return self.state_dir / "env"

    def settings(self) -> StackSettings:
        """This stack's connection settings, from its env file only (not the caller's CIFAKE_* variables)."""
        v = read_env_file(self.env_file)
        return StackSettings(
            kafka=KafkaSettings(bootstrap_servers=v["CIFAKE_KAFKA__BOOTSTRAP_SERVERS"]),
            s3=S3Settings(
                endpoint=v["CIFAKE_S3__ENDPOINT"],
                access_key=SecretStr(v["CIFAKE_S3__ACCESS_KEY"]),
                secret_key=SecretStr(v["CIFAKE_S3__SECRET_KEY"]),
                secure=v.get("CIFAKE_S3__SECURE", "false").lower() == "true",
            ),
            pg=PostgresSettings(dsn=SecretStr(v["CIFAKE_PG__DSN"])),
        )

    def service_env(self, **extra: str) -> dict[str, str]:
        """Environment for a service process: this stack's env file and nothing from the caller's CIFAKE_*."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIFAKE_")}
        env.update(CIFAKE_ENV_FILE=str(self.env_file), PYTHONUNBUFFERED="1", **extra)
        return env

    # -- processes -------------------------------------------------------------------------------

    def pid_files(self, service: str) -> list[Path]:
        """``kafka`` matches ``kafka.pid`` (one broker) and ``kafka-<i>.pid`` (several)."""
        run = self.state_dir / "run"
        if service == "kafka":
            return sorted(p for p in run.glob("kafka*.pid") if re.fullmatch(r"kafka(-\d+)?\.pid", p.name))
        return [run / f"{service}.pid"]

    def pid(self, service: str) -> int | None:
        """The pid of a running ``service`` (the first broker for ``kafka``), checked to belong to this state
        dir: its command line names a path inside it (or PostgreSQL's data dir, which may be linked)."""
        for file in self.pid_files(service):
            with contextlib.suppress(FileNotFoundError, ValueError):
                pid = int(file.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
                owned = str(self.state_dir) in cmdline or (
                    service == "postgres" and str((self.state_dir / "postgres").resolve()) in cmdline
                )
                if owned and alive(pid):
                    return pid
        return None

    def kill(self, service: str, sig: signal.Signals, timeout: float = 60) -> int:
        """Send ``sig`` to the service and wait until it has exited; returns the pid."""
        pid = self.pid(service)
        if pid is None:
            raise RuntimeError(f"{service} of {self.state_dir} is not running")
        os.kill(pid, sig)
        wait_until(lambda: not alive(pid), timeout, f"{service} (pid {pid}) to exit after {sig.name}", 0.1)
        return pid
