"""The stage runner (crypson.stages.runner) on real stages, a real embedded MLflow store and tiny glyph data."""

import json

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from crypson import tracking
from crypson.config import parse_config
from crypson.stages import runner
from crypson.stages import stage_function as stage_lookup

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(tmp_path, **vae) -> tuple:
    raw = {"data": {"source": "glyphs", "glyphs": {"train_per_class": 6, "test_per_class": 2}},
           "vae": {"epochs": 3, "batch_size": 32, "max_train_batches": 2, "channels": [4, 4, 8, 8], **vae},
           "tracking": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "artifact_dir": "mlartifacts"}}
    return parse_config(raw), yaml.safe_dump(raw).encode()


@pytest.fixture
def prepared(tmp_path, monkeypatch):
    """A folder with ingested, prepared and validated glyph data; the runner's environment pinned."""
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "CRYPSON_EXECUTION_ID", "KFP_RUN_ID", "CRYPSON_IMAGE", "CRYPSON_BUILD_COMMIT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CRYPSON_GIT_COMMIT", "0123abc")
    config, params = tiny(tmp_path)
    for stage in runner.DATA_STAGES:
        runner.run_stage(stage, config, tmp_path, params)
    yield tmp_path
    mlflow.set_tracking_uri(None)


def test_unknown_stage_is_refused_by_name(tmp_path):
    config, params = tiny(tmp_path)
    with pytest.raises(ValueError, match="unknown stage 'train_gan'; allowed: ingest, prepare"):
        runner.run_stage("train_gan", config, tmp_path, params)


def test_data_stages_write_their_outputs_and_validate_alone_has_a_run(prepared):
    assert json.loads((prepared / "reports" / "validation.json").read_text())["success"] is True
    assert (prepared / "data" / "prepared" / "classes.json").is_file()
    assert (prepared / "reports" / "data_docs" / "index.html").is_file()
    client = MlflowClient(f"sqlite:///{prepared / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = [r for r in client.search_runs(experiments) if "crypson.stage" in r.data.tags]
    assert run.data.tags["crypson.stage"] == "validate" and run.info.status == "FINISHED"
    assert run.data.metrics["failed_expectations"] == 0 and run.data.metrics["expectations"] > 20
    (dataset,) = run.inputs.dataset_inputs
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "validation"
    docs = [f.path for f in client.list_artifacts(run.info.run_id, "data_docs")]
    assert "data_docs/index.html" in docs and "data_docs/validations" in docs
    # Kubeflow keeps validate a pure, cacheable data step: no run
    config, params = tiny(prepared)
    runner.run_stage("validate", config, prepared, params, track_data=False)
    assert len([r for r in client.search_runs(experiments) if "crypson.stage" in r.data.tags]) == 1


def test_a_stage_error_reaches_the_caller_as_itself(tmp_path):
    config, params = tiny(tmp_path)
    with pytest.raises(runner.stage_errors()) as raised:
        runner.run_stage("train_vae", config, tmp_path, params)  # nothing prepared
    assert isinstance(raised.value, FileNotFoundError) and "prepared" in str(raised.value)


def test_stage_runs_of_one_params_state_share_a_parent_and_carry_provenance(prepared):
    config, params = tiny(prepared)
    first = runner.tracking_context(config, params, prepared)
    again = runner.tracking_context(config, params, prepared)
    other = runner.tracking_context(*tiny(prepared, lr=0.01), prepared)
    assert first.parent_run_id == again.parent_run_id != other.parent_run_id
    manifest = json.loads((prepared / "data" / "prepared" / "manifest.json").read_text())
    assert first.tags["git_commit"] == "0123abc" and first.tags["data_version"] == manifest["data_version"]
    assert first.tags["data_source"] == "glyphs"
    parent = MlflowClient().get_run(first.parent_run_id)
    digest = runner.hashlib.sha256(params).hexdigest()[:8]
    assert parent.info.run_name == f"0123abc glyphs/balanced params {digest}"
    assert parent.data.tags["mlflow.source.git.commit"] == "0123abc"  # the UI's Version column
    assert parent.data.tags["mlflow.source.type"] == "LOCAL"


def test_in_an_image_the_runs_record_its_reference_digest_and_baked_commit(prepared, monkeypatch):
    config, params = tiny(prepared)
    image = f"ghcr.io/crypson/crypson:{'c0ffee' * 2}@sha256:{'ab' * 32}"
    monkeypatch.setenv("CRYPSON_IMAGE", image)
    monkeypatch.setenv("CRYPSON_BUILD_COMMIT", "c0ffee" * 2)  # docker/Dockerfile's GIT_COMMIT
    monkeypatch.setenv("CRYPSON_GIT_COMMIT", "0123abc")  # the submitter's checkout: not what ran
    tags = runner.tracking_context(config, params, prepared).tags
    assert tags["git_commit"] == tags["crypson.image_commit"] == "c0ffee" * 2
    assert tags["crypson.submitted_commit"] == "0123abc"
    assert tags["crypson.image"] == image and tags["crypson.image_digest"] == "sha256:" + "ab" * 32
    monkeypatch.delenv("CRYPSON_BUILD_COMMIT")
    monkeypatch.setenv("CRYPSON_IMAGE", "ghcr.io/crypson/crypson:0.1.0")  # by tag: no digest to record
    tags = runner.tracking_context(config, params, prepared).tags
    assert tags["git_commit"] == "0123abc" and "crypson.image_digest" not in tags
    assert "crypson.image_commit" not in tags and "crypson.submitted_commit" not in tags


def test_a_failing_stage_ends_its_execution_failed_and_a_rerun_reopens_it(prepared):
    config, params = tiny(prepared)
    with pytest.raises(FileNotFoundError):
        runner.run_stage("evaluate", config, prepared, params)  # no models trained
    parent_id = runner.tracking_context(config, params, prepared).parent_run_id  # reopened: RUNNING again
    client = MlflowClient()
    assert client.get_run(parent_id).info.status == "RUNNING"
    with pytest.raises(FileNotFoundError):
        runner.run_stage("train_classifier", config, prepared, params)
    assert client.get_run(parent_id).info.status == "FAILED"


def test_an_embedded_store_lives_in_the_dvc_project_also_for_temporary_experiments(tmp_path):
    config, _ = tiny(tmp_path)
    relative = parse_config({"tracking": {"tracking_uri": "sqlite:///mlflow.db", "artifact_dir": "mlartifacts"}})
    project, copy = tmp_path / "project", tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpabc"
    # `dvc exp run --temp/--queue`: the stage runs in a copy, DVC_ROOT names the project
    assert runner.tracking_store(relative, copy, {"DVC_ROOT": str(project)}) == (
        f"sqlite:///{project.resolve()}/mlflow.db", project.resolve() / "mlartifacts")
    assert runner.tracking_store(relative, copy, {}) == (f"sqlite:///{copy.resolve()}/mlflow.db",
                                                         copy.resolve() / "mlartifacts")
    assert runner.tracking_store(config, copy, {"DVC_ROOT": str(project)})[0] == config.tracking.tracking_uri
    server = {"DVC_ROOT": str(project), "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    assert runner.tracking_store(relative, copy, server)[0] == "http://127.0.0.1:5000"


def test_one_dvc_experiment_is_one_execution_whatever_its_copy_changes(monkeypatch, tmp_path):
    from crypson import provenance

    monkeypatch.delenv("CRYPSON_EXECUTION_ID", raising=False)
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    monkeypatch.setenv("DVC_EXP_NAME", "mated-cusp")
    monkeypatch.setattr(provenance, "git", lambda *args, **kwargs: str(len(args)) + str(tmp_path))
    first = provenance.execution_key(b"params")
    monkeypatch.setattr(provenance, "git", lambda *args, **kwargs: "a changed working tree")
    assert provenance.execution_key(b"params") == first != provenance.execution_key(b"other params")
    monkeypatch.setenv("DVC_EXP_NAME", "bluff-bish")
    assert provenance.execution_key(b"params") != first


def test_the_execution_name_says_code_data_and_settings_or_kfp_run():
    name = runner.execution_name("0123456789abcdef-dirty", "emnist", "letters", b"x")
    assert name == f"01234567-dirty emnist/letters params {runner.hashlib.sha256(b'x').hexdigest()[:8]}"
    # A KFP task holds only its stage's params sections: the run names the execution, the same in every task.
    names = {runner.execution_name("0123456789abcdef", "emnist", "letters", text, "run-42abcdefgh")
             for text in (b'{"vae": {}}', b'{"cgan": {}}')}
    assert names == {"01234567 emnist/letters kfp run-42ab"}


def test_an_interrupted_training_stage_resumes_in_its_own_mlflow_run(prepared, monkeypatch):
    config, params = tiny(prepared)
    log_epoch = tracking.log_epoch_metrics

    def killed_in_epoch_two(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt  # as a kill between the first epoch's checkpoint and the second's
        log_epoch(epoch, metrics)

    monkeypatch.setattr(tracking, "log_epoch_metrics", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        runner.run_stage("train_vae", config, prepared, params, progress=False)
    assert (prepared / "checkpoints" / "vae.pt").is_file()
    monkeypatch.setattr(tracking, "log_epoch_metrics", log_epoch)
    runner.run_stage("train_vae", config, prepared, params, progress=False)

    client = MlflowClient()
    experiment = mlflow.get_experiment_by_name(config.tracking.experiment)
    (run,) = client.search_runs([experiment.experiment_id], "tags.`crypson.stage` = 'train_vae'")
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1, 2]
    registration = json.loads((prepared / "models" / "vae" / "registration.json").read_text())
    assert registration["run_id"] == run.info.run_id
    assert not (prepared / "checkpoints" / "vae.pt").exists()


def test_each_stage_resolves_to_its_function_whatever_was_imported_before():
    from crypson.stages import attack  # noqa: F401 - the module named like its stage, imported first

    for name in runner.STAGES:
        function = stage_lookup(name)
        assert callable(function) and function.__name__ == name
