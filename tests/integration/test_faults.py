"""Faults: the S3 store, then the tracking server, stopped while the pipeline runs; then recovery.

One repository goes through both faults so that the retraining happens once (the CPU budget): a
changed classifier setting makes train_classifier and every stage after it due. The store is
stopped before train_classifier (it trains, then cannot upload); the server is stopped after
train_classifier finished, mid-pipeline, before evaluate and attack.
"""

import mlflow
import pytest
import yaml

from crypson import stack, tracking
from tests.e2e.helpers import copy_repo
from tests.integration.helpers import commit, ran_stages, run

pytestmark = pytest.mark.integration
AFTER_CLASSIFIER = {"evaluate", "attack", "promote"}


def registry_state(config: stack.StackConfig) -> dict[str, list[str]]:
    """Versions of each registered model, after checking that each one's model files load."""
    client = mlflow.MlflowClient(config.tracking_uri)
    state = {}
    for name in tracking.MODEL_NAMES.values():
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        for version in versions:  # raises if a version has no model in the bucket
            assert mlflow.models.get_model_info(f"models:/{name}/{version}").flavors, (name, version)
        state[name] = [str(v) for v in versions]
    return state


def test_store_and_server_outages_fail_fast_and_resume(services, server_pipeline, tmp_path):
    repo = copy_repo(server_pipeline[0], tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["classifier"]["lr"] = params["classifier"]["lr"] / 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    commit(repo, "slower classifier")
    env = stack.client_env(services)
    before = registry_state(services)

    # 1. S3 store down: train_classifier trains, cannot upload, fails and registers nothing.
    assert stack.down(services, ("s3",)) == ["s3"]
    assert stack.down(services, ("s3",)) == []  # down when down is fine
    try:
        failed = run(["dvc", "repro"], repo, env=env, check=False, timeout=300)
    finally:
        stack.up(services, ("s3",))
    assert failed.returncode != 0 and ran_stages(failed.stdout) == {"train_classifier"}
    message = " ".join(failed.stderr.split())
    # One clean line from the CLI (no traceback): the stage, and that the artifact store is down.
    assert "crypson train_classifier: error:" in message and "artifact store" in message
    assert "Traceback" not in message
    assert registry_state(services) == before

    # 2. The store is back: train_classifier completes; then the tracking server goes down.
    assert ran_stages(run(["dvc", "repro", "train_classifier"], repo, env=env).stdout) == {"train_classifier"}
    trained = registry_state(services)
    classifier_before = before["crypson-classifier"]
    assert trained["crypson-classifier"] == [*classifier_before, str(int(classifier_before[-1]) + 1)]
    assert stack.down(services, ("mlflow",)) == ["mlflow"]
    try:
        failed = run(["dvc", "repro"], repo, env=env, check=False, timeout=300)
    finally:
        stack.up(services, ("mlflow",))
    assert failed.returncode != 0 and len(ran_stages(failed.stdout)) == 1
    assert ran_stages(failed.stdout) <= {"evaluate", "attack"}
    message = " ".join(failed.stderr.split())
    assert f"MLflow tracking server {services.tracking_uri} is unavailable after 3 retries" in message
    assert "Traceback" not in message
    assert registry_state(services) == trained

    # 3. Everything back: only what had not finished runs; nothing is trained again.
    resumed = run(["dvc", "repro"], repo, env=env)
    assert ran_stages(resumed.stdout) == AFTER_CLASSIFIER
    for stage in ("train_cgan", "train_vae", "train_classifier"):
        assert f"Stage '{stage}' didn't change, skipping" in resumed.stdout
    assert registry_state(services) == trained
    champion = tracking.champion_versions(list(tracking.MODEL_NAMES.values()))
    assert champion["crypson-classifier"] == trained["crypson-classifier"][-1]  # the tiny gates always pass
