"""Where a run's code and data come from: the git commit, the execution key, the DVC data hash.

Recorded as tags on every MLflow stage run and model version (crypson.stages.runner) and on every
Kubeflow run (crypson.kfp.cli). Nothing here imports torch, MLflow or typer.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import yaml


def git(*args: str, cwd: Path | None = None) -> str:
    """`git ARGS` in `cwd` (default: the current folder), stripped; "" when git or the repo is missing."""
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def git_commit(cwd: Path | None = None) -> str:
    """HEAD, with '-dirty' when tracked files differ; CRYPSON_GIT_COMMIT wins (containers have no .git)."""
    if os.environ.get("CRYPSON_GIT_COMMIT"):
        return os.environ["CRYPSON_GIT_COMMIT"]
    head = git("rev-parse", "HEAD", cwd=cwd) or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)dvc.lock", cwd=cwd)
    return f"{head}-dirty" if dirty else head


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
