"""Background services: start in their own session, record the PID, stop that process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from crypson.stack.settings import HOST, StackConfig, StackError


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((HOST, port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user (postgres)
        return True
    return True


def read_pid(path: Path) -> int | None:
    """The PID in `path` if that process is alive; a stale file is removed."""
    try:
        pid = int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    if pid_alive(pid):
        return pid
    if path.name != "postmaster.pid":  # postgres cleans its own file up on the next start
        path.unlink(missing_ok=True)
    return None


def require_free(config: StackConfig, *services: str) -> None:
    """Refuse to start when another program holds one of our ports (it is not ours to stop)."""
    taken = [f"{HOST}:{config.port(s)} ({s})" for s in services if port_open(config.port(s))]
    if taken:
        raise StackError(f"port(s) in use by another program: {', '.join(taken)}; "
                         "stop it or choose other ports with CRYPSON_STACK_PORT_BASE")


def wait(check, what: str, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise StackError(f"{what} not ready after {timeout:.0f} s; see {log}")


def spawn(command: list[str], log: Path, pid_file: Path, env: dict[str, str]) -> int:
    """Start `command` in its own session (so its workers are stopped with it); record its PID."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
    pid_file.write_text(f"{process.pid}\n")
    return process.pid


def terminate(pid_file: Path, timeout: float = 30.0) -> bool:
    """SIGTERM the process group started under the PID in `pid_file`, SIGKILL it after `timeout`."""
    pid = read_pid(pid_file)
    if pid is None:
        return False
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        reap(pid)
        time.sleep(0.2)
    if pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)
        time.sleep(0.5)
        reap(pid)
    pid_file.unlink(missing_ok=True)
    return True


def reap(pid: int) -> None:
    """Collect the exit status when the service is our own child (in tests), so it is not a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


