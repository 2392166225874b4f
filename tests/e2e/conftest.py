"""The tiny pipeline, run once per test session in a fresh git + DVC repository."""

import shutil

import pytest

from tests.e2e.helpers import REPO, copy_repo, run


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    repo = tmp_path_factory.mktemp("crypson")
    for item in ("src", "presets", "dvc.yaml", "params.yaml"):
        source = REPO / item
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, repo / item)
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["crypson", "preset", "tiny"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm", "tiny"], repo)
    first = run(["dvc", "repro"], repo)
    return repo, first


@pytest.fixture
def pipeline_copy(pipeline, tmp_path):
    """The tiny pipeline's repository copied for one test that changes params, data or the registry."""
    repo, first = pipeline
    return copy_repo(repo, tmp_path / "repo"), first
