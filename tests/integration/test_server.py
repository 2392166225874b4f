"""The tiny pipeline tracked on the stack: PostgreSQL registry, artifacts in the S3 bucket."""

import base64
import json
import urllib.error
import urllib.request

import boto3
import mlflow
import pytest

from crypson import stack, tracking
from tests.integration.helpers import run

pytestmark = pytest.mark.integration


def bucket_keys(config: stack.StackConfig, prefix: str) -> set[str]:
    creds = stack.credentials(config)
    client = boto3.client("s3", endpoint_url=config.s3_endpoint, aws_access_key_id=creds.access_key,
                          aws_secret_access_key=creds.secret_key, region_name="us-east-1")
    keys = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=config.bucket, Prefix=prefix):
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


def test_stack_is_idempotent_and_keeps_secrets_out_of_logs(services):
    before = {path.name: path.read_text() for path in services.root.rglob("*.pid")}
    stack.up(services)  # everything already runs: nothing is started twice
    assert {path.name: path.read_text() for path in services.root.rglob("*.pid")} == before
    assert stack.status(services) == {"postgres": True, "s3": True, "mlflow": True}
    creds = stack.credentials(services)
    assert (services.root / "credentials.json").stat().st_mode & 0o777 == 0o600
    for log in services.root.rglob("*.log"):
        text = log.read_text(errors="replace")
        for secret in (creds.secret_key, creds.db_password, creds.mlflow_password, creds.flask_secret):
            assert secret not in text, log


def server_answer(services, path: str, login: tuple[str, str] | None) -> int:
    request = urllib.request.Request(f"{services.tracking_uri}{path}")
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_tracking_server_asks_for_a_login(services):
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    password = stack.credentials(services).mlflow_password
    assert server_answer(services, search, None) == 401
    assert server_answer(services, search, ("crypson", password[::-1])) == 401
    assert server_answer(services, search, ("crypson", password)) == 200
    assert server_answer(services, "/health", None) == 200  # what a load balancer probes


def test_postgres_holds_the_runs_and_the_registry(services, server_pipeline):
    """MLflow's backend store is the stack's PostgreSQL: its tables hold what the client reads back."""
    import psycopg2

    client = mlflow.MlflowClient(services.tracking_uri)
    experiment = client.get_experiment_by_name("crypson")
    runs = {r.info.run_id for r in client.search_runs([experiment.experiment_id], max_results=1000)}
    creds = stack.credentials(services)
    with psycopg2.connect(host=stack.HOST, port=services.port("postgres"), dbname="mlflow", user="crypson",
                          password=creds.db_password) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT run_uuid FROM runs WHERE experiment_id = %s", (int(experiment.experiment_id),))
        assert {row[0] for row in cursor.fetchall()} == runs
        cursor.execute("SELECT name, version FROM model_versions WHERE name LIKE 'crypson-%%'")
        assert {(name, str(version)) for name, version in cursor.fetchall()} >= {
            (name, "1") for name in tracking.MODEL_NAMES.values()}


def test_pipeline_registers_versions_with_artifacts_in_the_bucket(services, server_pipeline):
    repo, _ = server_pipeline
    client = mlflow.MlflowClient(services.tracking_uri)
    models = {m.name: m for m in client.search_registered_models() if m.name in tracking.MODEL_NAMES.values()}
    assert set(models) == set(tracking.MODEL_NAMES.values())
    for name, model in models.items():
        assert model.description, name
        assert {k: str(v) for k, v in model.aliases.items()} == {"candidate": "1", "champion": "1"}, name
        version = client.get_model_version(name, "1")
        assert version.description and version.tags["git_commit"] and len(version.tags["data_version"]) == 64
        assert version.tags["dvc_data_md5"].endswith(".dir")
    runs = client.search_runs([client.get_experiment_by_name("crypson").experiment_id])
    stage_runs = {r.data.tags.get("crypson.stage"): r for r in runs if "crypson.stage" in r.data.tags}
    assert {"train_cgan", "train_vae", "train_classifier", "evaluate", "attack", "promote"} <= set(stage_runs)
    for stage_run in stage_runs.values():
        assert stage_run.info.artifact_uri.startswith(f"s3://{services.bucket}/mlflow/")
    keys = bucket_keys(services, "mlflow/")
    # the promote stage's gates file and the model files are objects in the bucket
    promote_prefix = stage_runs["promote"].info.artifact_uri.removeprefix(f"s3://{services.bucket}/")
    assert f"{promote_prefix}/gates.json" in keys
    assert sum(key.endswith("/MLmodel") for key in keys) >= 3
    # the champion loads back from the bucket through the registry
    version = mlflow.MlflowClient().get_model_version_by_alias("crypson-vae", "champion").version
    vae, _ = tracking.load_registered_network("crypson-vae", str(version), "vae")  # SHA-256 checked, weights only
    assert sum(p.numel() for p in vae.parameters()) > 0
    assert json.loads((repo / "reports" / "promotion.json").read_text())["promoted"] is True


def test_missing_s3_endpoint_fails_before_any_upload(services, server_pipeline):
    repo, _ = server_pipeline
    before = bucket_keys(services, "mlflow/")
    env = stack.client_env(services)
    done = run(["crypson", "stage", "promote"], repo, env=env, drop=("MLFLOW_S3_ENDPOINT_URL",), check=False)
    assert done.returncode == 2
    assert "MLFLOW_S3_ENDPOINT_URL is not set" in done.stderr and f"s3://{services.bucket}/mlflow" in done.stderr
    assert bucket_keys(services, "mlflow/") == before
