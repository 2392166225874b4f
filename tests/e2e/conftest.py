"""The tiny pipeline, run once per test session in a fresh git + DVC repository."""

import shutil

import pytest

from tests.e2e.helpers import REPO, run


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
