"""Helpers shared by the integration tests: commands with the stack's environment, new tiny repositories
(copies: tests.e2e.helpers.copy_repo)."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STACK_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

def run(command: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True,
        drop: tuple[str, ...] = (), timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `command` with this venv first on PATH, `env` added and the keys in `drop` removed."""
    full = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    for key in (*STACK_KEYS, *drop):
        if key not in (env or {}) or key in drop:
            full.pop(key, None)
    done = subprocess.run(command, cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done

def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm", message], repo)

def new_tiny_repo(target: Path) -> Path:
    """A fresh git + DVC repository with the package, the pipeline and the tiny preset."""
    for item in ("src", "presets", "dvc.yaml", "params.yaml"):
        source = REPO / item
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, target / item)
    run(["git", "init", "-q"], target)
    run(["dvc", "init", "-q"], target)
    run(["crypson", "preset", "tiny"], target)
    commit(target, "tiny")
    return target

def ran_stages(output: str) -> set[str]:
    """The stages `dvc repro` ran, from its "Running stage 'x':" lines."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}

def file_digests(root: Path, folders: tuple[str, ...]) -> dict[str, str]:
    """md5 of every file under the given folders of `root`, by relative path."""
    digests = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path.name != ".gitignore":  # DVC's own, not an output
                digests[str(path.relative_to(root))] = hashlib.md5(path.read_bytes()).hexdigest()
    return digests
