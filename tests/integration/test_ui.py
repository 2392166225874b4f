"""The MLflow UI, rendered by headless Chromium from the stack's server after the tiny pipeline."""

import base64
import json
import html
import http.server
import os
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
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


@pytest.fixture
def signed_in(services):
    """The server through a local proxy that adds the stack's login to every request, as a browser does once
    the user typed it in (headless Chromium cannot answer the login prompt, and sends credentials written
    into a URL only with the page, not with the app's API calls)."""
    login = stack.client_env(services)
    token = base64.b64encode(f"{login['MLFLOW_TRACKING_USERNAME']}:{login['MLFLOW_TRACKING_PASSWORD']}".encode())
    upstream = services.tracking_uri

    class SignIn(http.server.BaseHTTPRequestHandler):
        def forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            request = urllib.request.Request(upstream + self.path, data=body, method=self.command,
                                             headers={**headers, "Authorization": f"Basic {token.decode()}"})
            try:
                response = urllib.request.urlopen(request, timeout=60)
            except urllib.error.HTTPError as error:
                response = error
            with response:
                payload = response.read()
                self.send_response(response.status)
                for key, value in response.headers.items():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        do_GET = do_POST = do_PATCH = do_DELETE = forward

        def log_message(self, *args) -> None:  # quiet
            pass

    proxy = http.server.ThreadingHTTPServer((stack.HOST, 0), SignIn)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{stack.HOST}:{proxy.server_address[1]}"
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_ui_shows_run_metrics_and_model_aliases(services, server_pipeline, signed_in, tmp_path):
    client = mlflow.MlflowClient(services.tracking_uri)
    # The server asks for a login: the browser itself gets a 401 without one.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{services.tracking_uri}/ajax-api/2.0/mlflow/experiments/search?max_results=1")
    assert refused.value.code == 401
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


def test_runs_table_shows_the_named_execution_with_its_headline(services, server_pipeline, signed_in, tmp_path):
    """The link promote prints opens the model-training view: the execution's parent row (its name, not a
    hash) with the headline figures, without expanding anything."""
    _, output = server_pipeline
    client = mlflow.MlflowClient(services.tracking_uri)
    experiment = client.get_experiment_by_name("crypson")
    [parent] = client.search_runs([experiment.experiment_id], "tags.`crypson.execution` != ''")
    assert parent.info.status == "FINISHED" and parent.data.tags["promoted"] == "true"
    link = re.search(r"MLflow: (http\S+)", output).group(1)
    assert link.endswith(f"#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}"
                         "?workflowType=machine_learning")
    page = render(link.replace(services.tracking_uri, signed_in), tmp_path, "execution-run")
    assert parent.info.run_name in page
    for metric in ("accuracy_real", "psnr_db", "class_consistency", "promoted"):
        assert metric in page, metric
    table = render(f"{signed_in}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning",
                   tmp_path, "runs-table")
    assert parent.info.run_name in table and "Traces" not in table.split(parent.info.run_name)[0][-200:]


def test_version_page_shows_schema_and_model_card(services, server_pipeline, signed_in, tmp_path):
    repo, _ = server_pipeline
    page = render(f"{signed_in}/#/models/crypson-vae/versions/1", tmp_path, "vae-version")
    assert "Schema" in page and "Inputs (1)" in page and "Outputs (1)" in page  # the signature
    assert "Intended use." in page and "Known limits." in page  # the model card, as the description
    assert "receiver accuracy, real test images" in page
    # the version's logged model carries the evaluation's figures (LoggedModel metrics)
    registration = json.loads((repo / "models" / "vae" / "registration.json").read_text())
    experiment = mlflow.MlflowClient(services.tracking_uri).get_experiment_by_name("crypson")
    model = render(f"{signed_in}/#/experiments/{experiment.experiment_id}/models/{registration['model_id']}",
                   tmp_path, "vae-logged-model")
    assert "accuracy_real" in model and "evaluate" in model and "psnr_db" in model


def test_data_docs_and_security_report_open_as_web_pages(server_pipeline, tmp_path):
    repo, _ = server_pipeline
    validation = json.loads((repo / "reports" / "validation.json").read_text())["results"]["metadata"]
    (page,) = (repo / "reports" / "data_docs" / "validations" / "metadata").rglob("*.html")
    docs = render(page.as_uri(), tmp_path, "data-docs")
    assert "Expectation Suite: metadata" in docs and "Status: Succeeded" in docs
    assert f"Evaluated Expectations {validation['statistics']['evaluated_expectations']}" in docs
    report = render((repo / "reports" / "security_quality.html").as_uri(), tmp_path, "security-report")
    attacks = json.loads((repo / "metrics" / "attacks.json").read_text())
    assert "End to end" in report and "keyed-modular" in report
    assert f"{attacks['default_scheme_cer']:.3f}" in report
