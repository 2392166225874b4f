"""The MLflow UI, rendered by headless Chromium from the stack's server after the tiny pipeline."""

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest

from crypson import stack

pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--virtual-time-budget=10000", "--window-size=1400,1000"]


def render(url: str, workdir: Path, name: str) -> str:
    """The page's visible text after its scripts ran; a screenshot is kept beside it."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's `chromium` package is needed"
    profile = workdir / f"profile-{name}"  # fresh profile each time: no state between pages
    base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    screenshot = workdir / f"{name}.png"
    shot = subprocess.run([*base, f"--screenshot={screenshot}", url], capture_output=True, text=True, timeout=120,
                          cwd=workdir)
    assert shot.returncode == 0 and screenshot.stat().st_size > 0, shot.stderr[-2000:]
    if os.environ.get("CRYPSON_TEST_ARTIFACTS"):
        target = Path(os.environ["CRYPSON_TEST_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(screenshot, target / screenshot.name)
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom.stdout, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


def test_ui_shows_run_metrics_and_model_aliases(services, server_pipeline, tmp_path):
    client = mlflow.MlflowClient(services.tracking_uri)
    # The server asks for a login (basic auth): the browser sends the stack's, as a user types it in.
    login = stack.client_env(services)
    signed_in = services.tracking_uri.replace(
        "://", f"://{login['MLFLOW_TRACKING_USERNAME']}:{login['MLFLOW_TRACKING_PASSWORD']}@", 1)
    experiment = client.get_experiment_by_name("crypson")
    [evaluate] = client.search_runs([experiment.experiment_id], "tags.`crypson.stage` = 'evaluate'",
                                    max_results=1, order_by=["attributes.start_time ASC"])
    page = render(f"{signed_in}/#/experiments/{experiment.experiment_id}/runs/{evaluate.info.run_id}",
                  tmp_path, "evaluate-run")
    assert evaluate.info.run_name in page and "evaluate" == evaluate.info.run_name
    for metric in ("accuracy_real", "accuracy_generated", "psnr_db"):
        assert metric in page, metric
    # The UI shows the value rounded (or cut) to a few decimals: some number on the page lies within 0.01 of it.
    value = evaluate.data.metrics["psnr_db"]
    shown = [float(number) for number in re.findall(r"\d+\.\d+", page)]
    assert any(abs(number - value) <= 0.01 for number in shown), (value, shown[:40])

    version = client.get_model_version("crypson-vae", "1")
    page = render(f"{signed_in}/#/models/crypson-vae", tmp_path, "vae-model")
    assert client.get_registered_model("crypson-vae").description[:30] in page
    assert re.search(r"@\s*candidate", page) and re.search(r"@\s*champion", page)
    assert f"git_commit : {version.tags['git_commit']}" in page
    assert f"data_version : {version.tags['data_version']}" in page
