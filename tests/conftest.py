"""Shared test settings: nothing leaves the machine, and no test writes outside its tmp folder."""

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# One intra-op thread for torch here and in every stage process the tests start: their networks are tiny,
# and `make test` runs two workers on two cores, where a second thread per process only spins (measured:
# the tiny pipeline's stages use about one core each).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

# CI sets CRYPSON_FAIL_ON_SKIP=1: `make test` installs every tool the suite uses (kubectl, hadolint,
# kubernetes-validate, kfp, PostgreSQL, Chromium), so a skip there means a check silently did not run.
FAIL_ON_SKIP = os.environ.get("CRYPSON_FAIL_ON_SKIP") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if FAIL_ON_SKIP and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CRYPSON_FAIL_ON_SKIP=1 (CI): {reason}"


SUITES = ("unit", "e2e", "integration")

# Tests that share a session fixture run in one pytest-xdist worker (`make test` runs two): the local stack
# and its pipeline (integration), the tiny dvc pipeline's repository (e2e), kfp.local's run. Every other test
# is a unit of its own. (Measured here: xdist_group marks with `--dist loadgroup` did not group these tests
# under pytest 9.2, and each group's session fixture ran in both workers.)
GROUPS = {"tests/integration/": "stack", "tests/e2e/test_pipeline.py": "pipeline",
          "tests/e2e/test_cipher_cli.py": "pipeline", "tests/e2e/test_serving.py": "pipeline",
          "tests/e2e/test_kfp_local.py": "kfp-local"}


def group_of(nodeid: str) -> str | None:
    """The group of a test by its node id (relative to the repository root), or None."""
    return next((group for prefix, group in GROUPS.items() if nodeid.startswith(prefix)), None)


def pytest_xdist_make_scheduler(config, log):
    """xdist's load-scope scheduling with GROUPS as the scopes: each group goes whole to one worker (the
    largest first, so the two long groups start at once on the two workers), the other tests one by one."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid) or nodeid

    return GroupScheduling(config, log)


def pytest_collection_modifyitems(items):
    """Unit tests first, then e2e, then integration; within integration the fault test last: it retrains
    and re-registers the classifier on the shared server, so the other tests see the registry as the tiny
    pipeline's first execution left it (under xdist the stack's group keeps this order in its worker)."""
    def rank(item) -> tuple[int, bool]:
        suite = next((s for s in SUITES if f"/tests/{s}/" in str(item.path)), None)
        return (SUITES.index(suite) if suite else len(SUITES), item.path.name == "test_faults.py")

    items.sort(key=rank)
