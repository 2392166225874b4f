"""Shared test settings: nothing leaves the machine, and no test writes outside its tmp folder."""

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

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


def pytest_collection_modifyitems(items):
    """Unit tests first (fast feedback), then e2e, then integration; within integration the fault test
    last: it retrains and re-registers the classifier on the shared server, so the other tests see the
    registry as the tiny pipeline's first execution left it."""
    def rank(item) -> tuple[int, bool]:
        suite = next((s for s in SUITES if f"/tests/{s}/" in str(item.path)), None)
        return (SUITES.index(suite) if suite else len(SUITES), item.path.name == "test_faults.py")

    items.sort(key=rank)
