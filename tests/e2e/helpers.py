"""Helpers shared by the end-to-end tests."""

import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(command: list[str], cwd: Path, check: bool = True, stdin: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, input=stdin)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def copy_repo(source: Path, destination: Path) -> Path:
    """A private working copy of a pipeline repository, for a test that changes it.

    Files, git and the DVC cache copy as they are; the embedded MLflow store records absolute artifact
    locations (experiment, runs, logged models, versions), which are moved to the copy's folder so
    that nothing the test does lands in the source repository.
    """
    shutil.copytree(source, destination, symlinks=True)
    store = destination / "mlflow.db"
    if store.is_file():
        old, new = f"{source.resolve()}/", f"{destination.resolve()}/"
        with closing(sqlite3.connect(store)) as db, db:  # closed after the transaction commits
            tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for column in db.execute(f'PRAGMA table_info("{table}")').fetchall():
                    if column[2].upper().startswith(("VARCHAR", "TEXT")):
                        db.execute(f'UPDATE "{table}" SET "{column[1]}" = replace("{column[1]}", ?, ?) '
                                   f'WHERE instr("{column[1]}", ?) > 0', (old, new, old))
        with closing(sqlite3.connect(store)) as db:
            dump = "\n".join(db.iterdump())
        if old in dump:
            raise AssertionError(f"{store} still names {old} after the move")
    return destination
