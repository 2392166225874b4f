"""Fixtures shared by the unit tests."""

import pytest
import torch

# What points a process at a tracking server and an S3 store (the integration stack's client settings,
# or a user's shell): unit tests run on their own embedded stores, without any of them.
SERVER_SETTINGS = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                   "AWS_SESSION_TOKEN", "CRYPSON_KEY", "CRYPSON_SERVE_TOKEN")


@pytest.fixture(autouse=True)
def _own_environment(monkeypatch):
    for name in SERVER_SETTINGS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks train ~10x faster on one thread than with two on a busy 2-core machine; restored after
    the module (use it with `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def k8s_builds(tmp_path_factory):
    """Every object the infra README's `kubectl apply -k` commands create, per kustomization, built with the
    example env files (tests/unit/infra_helpers.py)."""
    import shutil

    from tests.unit.infra_helpers import render

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        # `make system-deps` installs Debian's kubernetes-client: missing, the manifest checks fail, not skip.
        pytest.fail("kubectl is not installed (it bundles kustomize; `make system-deps`): cannot build infra/k8s")
    return render(kubectl, tmp_path_factory.mktemp("k8s"))
