"""DVC's remote on the stack's bucket: push, lose the cache and the outputs, pull them back."""

import shutil

import pytest

from crypson import stack
from tests.e2e.helpers import copy_repo
from tests.integration.helpers import file_digests, run

pytestmark = pytest.mark.integration
OUTPUTS = ("data", "models")


def test_push_then_pull_restores_identical_files(services, server_pipeline, tmp_path):
    repo = copy_repo(server_pipeline[0], tmp_path / "repo")
    # Keys in .dvc/config.local (git-ignored by DVC), none in the environment: that path is the one tested.
    stack.configure_dvc_remote(services, repo, local_credentials=True)
    committed = (repo / ".dvc" / "config").read_text()
    assert services.dvc_remote_url in committed and services.s3_endpoint in committed
    creds = stack.credentials(services)
    assert creds.access_key not in committed and creds.secret_key not in committed
    assert run(["git", "check-ignore", ".dvc/config.local"], repo).stdout.strip() == ".dvc/config.local"

    expected = file_digests(repo, OUTPUTS)
    assert any(path.startswith("data/raw/") for path in expected) and any(p.startswith("models/") for p in expected)
    pushed = run(["dvc", "push"], repo)
    assert "pushed" in pushed.stdout
    shutil.rmtree(repo / ".dvc" / "cache")
    for folder in OUTPUTS:
        shutil.rmtree(repo / folder)
    run(["dvc", "pull"], repo)
    assert file_digests(repo, OUTPUTS) == expected
    assert "up to date" in run(["dvc", "status"], repo).stdout.lower()
