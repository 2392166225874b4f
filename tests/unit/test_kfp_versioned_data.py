"""The ingest component's DVC path: data/raw exactly as versioned at a git revision, from the remote.

A real git repository and a real DVC remote (a folder), with the local cache deleted, so the
files can only come from the remote, and two data versions, so the revision must be honoured.
"""

import shutil
import subprocess
from pathlib import Path

import pytest
from dvc.repo import Repo

from crypson.kfp import runtime


def git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args]
    return subprocess.run(command, cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def commit_raw(repo: Path, dvc: Repo, files: dict[str, bytes], message: str) -> str:
    raw = repo / "data" / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    for name, payload in files.items():
        (raw / name).write_bytes(payload)
    dvc.add(str(raw))
    dvc.push()
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def versioned(tmp_path_factory):
    """(repo, remote, {rev: files}) with the DVC cache emptied after pushing both versions."""
    repo, remote = tmp_path_factory.mktemp("project"), tmp_path_factory.mktemp("remote")
    git(repo, "init", "-q")
    dvc = Repo.init(str(repo))
    with dvc.config.edit() as config:
        config["remote"]["store"] = {"url": str(remote)}
        config["core"]["remote"] = "store"
        config["core"]["analytics"] = False
    first = {"a.gz": b"version one", "mapping.txt": b"0 48\n"}
    second = {"a.gz": b"version two", "mapping.txt": b"0 48\n", "b.gz": b"new file"}
    revisions = {commit_raw(repo, dvc, first, "data v1"): first, commit_raw(repo, dvc, second, "data v2"): second}
    dvc.close()
    shutil.rmtree(repo / ".dvc" / "cache")
    return repo, remote, revisions


def read_folder(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_each_revision_gives_its_own_data_from_the_remote(versioned, tmp_path):
    repo, _, revisions = versioned
    for index, (rev, files) in enumerate(revisions.items()):
        destination = tmp_path / f"raw{index}"
        runtime.fetch_versioned_raw(destination, str(repo), rev)
        assert read_folder(destination) == files


def test_a_remote_given_by_url_overrides_the_configured_one(versioned, tmp_path):
    repo, remote, revisions = versioned
    rev, files = next(iter(revisions.items()))
    moved = tmp_path / "moved-remote"
    shutil.copytree(remote, moved)
    runtime.fetch_versioned_raw(tmp_path / "raw", str(repo), rev, remote_url=str(moved))
    assert read_folder(tmp_path / "raw") == files
    # The repository's cache stays empty (DVC reads a revision through a temporary cache), so an
    # empty remote has nothing to give: DVC refuses and nothing is written.
    assert not (repo / ".dvc" / "cache").exists()
    with pytest.raises(FileNotFoundError, match="No storage files available"):
        runtime.fetch_versioned_raw(tmp_path / "none", str(repo), rev, remote_url=str(tmp_path / "empty"))
    assert not (tmp_path / "none").exists()


def test_revision_is_required_and_data_must_exist(versioned, tmp_path):
    repo, _, _ = versioned
    with pytest.raises(ValueError, match="data_rev is required"):
        runtime.fetch_versioned_raw(tmp_path / "raw", str(repo), "")
    bare = tmp_path / "bare"
    bare.mkdir()
    git(bare, "init", "-q")
    Repo.init(str(bare)).close()
    git(bare, "add", "-A")
    git(bare, "commit", "-qm", "no data")
    with pytest.raises(FileNotFoundError, match="no DVC-tracked data/raw"):
        runtime.fetch_versioned_raw(tmp_path / "raw", str(bare), "HEAD")


def test_ingest_checks_the_fetched_files_are_the_configured_split(versioned, tmp_path):
    repo, _, revisions = versioned
    rev = next(iter(revisions))
    with pytest.raises(FileNotFoundError):  # not EMNIST files: refused before anything is written
        runtime.ingest('{"data": {"split": "balanced"}}', str(tmp_path / "raw"), str(repo), rev)
    assert not (tmp_path / "raw").exists()
