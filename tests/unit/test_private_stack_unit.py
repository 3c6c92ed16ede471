"""The test harness's own process checks, on real processes (no stack needed)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from harness.wait import wait_until
from tests.private_stack import alive

# The main thread leaves through pthread_exit while a second thread keeps the process, and its listening
# socket, going for a while: the shape of a SIGKILLed JVM whose main thread is a zombie before the rest exit.
LEADER_EXITS_FIRST = """
import ctypes, socket, sys, threading, time
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
print(server.getsockname()[1], flush=True)
threading.Thread(target=time.sleep, args=(float(sys.argv[1]),)).start()
ctypes.CDLL(None).pthread_exit(None)
"""


def leader_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_process_whose_main_thread_is_a_zombie_is_alive_until_its_last_thread_exits() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", LEADER_EXITS_FIRST, "3"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        wait_until(lambda: leader_state(proc.pid) == "Z", 10, "the main thread to exit")
        # What restarting a service in this window runs into: the port still accepts connections.
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        assert alive(proc.pid)
        wait_until(lambda: not alive(proc.pid), 30, "the last thread to exit")
        # Gone means the sockets are closed too.
        refused = False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            refused = True
        assert refused, f"port {port} still accepts connections after the process exited"
    finally:
        proc.kill()
        proc.wait()


def test_a_process_that_exited_is_not_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not alive(proc.pid)
