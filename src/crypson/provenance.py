"""Where a run's code and data come from: the git commit, the execution key, the DVC data hash.

Recorded as tags on every MLflow stage run and model version (crypson.stages.runner) and on every
Kubeflow run (crypson.kfp.cli). Nothing here imports torch, MLflow or typer.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import yaml


def git(*args: str, cwd: Path | None = None) -> str:
    """`git ARGS` in `cwd` (default: the current folder), stripped; "" when git or the repo is missing."""
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


# Set in the component image at build time (docker/Dockerfile, build argument GIT_COMMIT): the commit of the
# code the image holds, which is the code that runs, whatever checkout submitted the run.
BUILD_COMMIT_ENV = "CRYPSON_BUILD_COMMIT"
# Set on every Kubeflow task at compile time (pipelines/crypson_pipeline.py): the image reference it runs in,
# `REPOSITORY:TAG@sha256:DIGEST` when submitted by digest.
IMAGE_ENV = "CRYPSON_IMAGE"
# The submitter's commit, passed by a Kubeflow run's `git_commit` argument (crypson.kfp.runtime).
SUBMITTED_COMMIT_ENV = "CRYPSON_GIT_COMMIT"


def git_commit(cwd: Path | None = None) -> str:
    """The commit of the code that runs: the image's build commit in a container, else the submitter's
    (CRYPSON_GIT_COMMIT: a container has no .git), else HEAD with '-dirty' when tracked files differ."""
    for variable in (BUILD_COMMIT_ENV, SUBMITTED_COMMIT_ENV):
        if os.environ.get(variable):
            return os.environ[variable]
    head = git("rev-parse", "HEAD", cwd=cwd) or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)dvc.lock", cwd=cwd)
    return f"{head}-dirty" if dirty else head


def image_digest(reference: str) -> str:
    """The `sha256:...` digest of an image reference (`name[:tag]@sha256:hex`), or "" for one by tag only."""
    _, at, digest = reference.rpartition("@")
    return digest if at and digest.startswith("sha256:") else ""


def image_tags(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What identifies the running code inside a component image, as MLflow tags (none outside one).

    `crypson.image` and `crypson.image_digest` name the image (a digest pins its content; a tag can be
    pushed over); `crypson.image_commit` is the commit baked into it at build time; when the submitter's
    checkout was another commit, `crypson.submitted_commit` says which, since the image's code is what ran.
    """
    environ = os.environ if environ is None else environ
    tags: dict[str, str] = {}
    if environ.get(IMAGE_ENV):
        tags["crypson.image"] = environ[IMAGE_ENV]
        if image_digest(environ[IMAGE_ENV]):
            tags["crypson.image_digest"] = image_digest(environ[IMAGE_ENV])
    built, submitted = environ.get(BUILD_COMMIT_ENV, ""), environ.get(SUBMITTED_COMMIT_ENV, "")
    if built:
        tags["crypson.image_commit"] = built
        if submitted and submitted != built:
            tags["crypson.submitted_commit"] = submitted
    return tags


def execution_key(params: bytes) -> str:
    """What groups stage runs into one pipeline execution in MLflow.

    CRYPSON_EXECUTION_ID (set by the Kubeflow components to the KFP run id) wins, then the DVC
    experiment's name (DVC sets DVC_EXP_NAME for `dvc exp run`). Under `dvc repro` each stage is its
    own process, so the key is the state that the execution runs: the commit, the uncommitted changes
    to tracked files and the params (the file's bytes).
    """
    if os.environ.get("CRYPSON_EXECUTION_ID"):
        return os.environ["CRYPSON_EXECUTION_ID"]
    if os.environ.get("DVC_EXP_NAME"):
        # `dvc exp run` (--temp, --queue): one experiment is one execution. Its temporary copy tracks the
        # workspace's untracked files too, so the working tree's diff changes with every stage.
        digest = hashlib.sha256(f"{os.environ.get('DVC_EXP_BASELINE_REV', '')} {os.environ['DVC_EXP_NAME']}".encode())
        digest.update(params)
        return digest.hexdigest()[:16]
    digest = hashlib.sha256(git_commit().encode())
    digest.update(git("diff", "HEAD", "--", ".", ":(exclude)dvc.lock").encode())
    digest.update(params)
    return digest.hexdigest()[:16]


def dvc_data_md5(root: Path) -> str:
    """The DVC hash of data/raw from dvc.lock (empty outside a DVC repo)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return ""
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for out in stages.get("ingest", {}).get("outs", []):
        if out.get("path") == "data/raw":
            return str(out.get("md5", ""))
    return ""
