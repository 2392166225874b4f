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
