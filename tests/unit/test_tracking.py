"""The MLflow layer against a real (embedded SQLite) tracking store in a temporary folder."""

from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from crypson import model_files, tracking
from crypson.models.vae import VAE


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    experiment_id = tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", "test", tmp_path / "artifacts")
    yield experiment_id
    mlflow.set_tracking_uri(None)


def _context(experiment_id: str, key: str = "exec-1") -> tracking.TrackingContext:
    tags = {"git_commit": "abc123", "data_version": "d" * 64}
    return tracking.TrackingContext(experiment_id, tracking.execution_run(experiment_id, key, "pipeline", tags), tags)


def test_stage_runs_of_one_execution_share_a_parent(store):
    first, same, other = _context(store), _context(store), _context(store, "exec-2")
    assert first.parent_run_id == same.parent_run_id != other.parent_run_id
    with tracking.stage_run(first, "train_vae") as run_id:
        tracking.log_params({"vae.lr": 0.1})
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == first.parent_run_id
    assert run.data.tags["git_commit"] == "abc123" and run.data.tags["crypson.stage"] == "train_vae"
    # Resuming the run (after an interruption) logs the same params again without an error.
    with tracking.stage_run(first, "train_vae", resume_run_id=run_id):
        tracking.log_params({"vae.lr": 0.1, "vae.epochs": 3})
    assert MlflowClient().get_run(run_id).data.params == {"vae.lr": "0.1", "vae.epochs": "3"}


def test_the_execution_run_is_running_until_ended_and_reopens_on_a_rerun(store):
    client = MlflowClient()
    context = _context(store)
    assert client.get_run(context.parent_run_id).info.status == "RUNNING"
    tracking.end_execution(context.parent_run_id, "FAILED")
    failed = client.get_run(context.parent_run_id).info
    assert failed.status == "FAILED" and failed.end_time is not None
    again = _context(store)  # a stage of the same execution starts again
    assert again.parent_run_id == context.parent_run_id
    assert client.get_run(context.parent_run_id).info.status == "RUNNING"
    tracking.end_execution(context.parent_run_id, "FINISHED", {"accuracy_real": 0.97, "unmeasured": float("nan"),
                                                               "missing": None}, {"promoted": "true"})
    parent = client.get_run(context.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics == {"accuracy_real": 0.97} and parent.data.tags["promoted"] == "true"


def test_a_killed_stage_run_is_marked_killed_when_the_stage_runs_again(store, monkeypatch):
    context = _context(store)
    client = MlflowClient()
    with tracking.stage_run(context, "evaluate") as finished_id:
        pass
    # What a SIGKILLed stage leaves: a RUNNING run whose process (on this host) is gone.
    dead = client.create_run(store, run_name="evaluate", tags={
        "mlflow.parentRunId": context.parent_run_id, "crypson.stage": "evaluate",
        tracking.HOST_TAG: tracking.socket.gethostname(), tracking.PID_TAG: "999999999"}).info.run_id
    elsewhere = client.create_run(store, run_name="evaluate", tags={
        "mlflow.parentRunId": context.parent_run_id, "crypson.stage": "evaluate",
        tracking.HOST_TAG: "another-host", tracking.PID_TAG: "1"}).info.run_id
    with tracking.stage_run(context, "evaluate") as new_id:
        assert client.get_run(dead).info.status == "KILLED"
    assert client.get_run(elsewhere).info.status == "RUNNING"  # nothing here can tell whether it still runs
    assert client.get_run(finished_id).info.status == "FINISHED" and client.get_run(new_id).info.status == "FINISHED"


def test_links_open_the_model_training_view(store):
    assert tracking.ui_link("http://mlflow:5000/", "3", "abc") == \
        "http://mlflow:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert tracking.ui_link("sqlite:///mlflow.db", "1") == "http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning"
    # and the experiment itself is a model-training one, so the UI does not open on its GenAI overview
    assert mlflow.get_experiment(store).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_two_stages_racing_to_tag_the_experiment_both_go_on(tmp_path, monkeypatch):
    """The cGAN and VAE tasks configure tracking at once: on a server with PostgreSQL the second tag insert
    fails with a unique-key error (seen in tests/integration/test_concurrency.py). Here the other process's
    tag lands just before ours is refused; a refusal with no tag there is still an error."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("raced", artifact_location=(tmp_path / "a").as_uri())
    set_tag = MlflowClient.set_experiment_tag

    def the_other_process_was_first(self, experiment, key, value):
        set_tag(self, experiment, key, value)
        raise mlflow.exceptions.MlflowException("duplicate key value violates unique constraint \"experiment_tag_pk\"")

    monkeypatch.setattr(MlflowClient, "set_experiment_tag", the_other_process_was_first)
    assert tracking.configure(uri, "raced") == experiment_id
    assert mlflow.get_experiment(experiment_id).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"

    def refused(self, experiment, key, value):
        raise mlflow.exceptions.MlflowException("permission denied")

    other = mlflow.create_experiment("refused", artifact_location=(tmp_path / "b").as_uri())
    monkeypatch.setattr(MlflowClient, "set_experiment_tag", refused)
    with pytest.raises(mlflow.exceptions.MlflowException, match="permission denied"):
        tracking.configure(uri, "refused")
    assert tracking.EXPERIMENT_KIND_TAG not in mlflow.get_experiment(other).tags
    mlflow.set_tracking_uri(None)


def test_training_runs_log_system_metrics_and_their_dataset(store, tmp_path, monkeypatch):
    import time

    import pandas as pd

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    (tmp_path / "prepared").mkdir()
    pd.DataFrame({"split": ["train", "test"], "label": [0, 1]}).to_parquet(tmp_path / "prepared" / "metadata.parquet")
    manifest = {"source": "glyphs", "split": "balanced", "data_version": "ab" * 32}
    tags = {"git_commit": "abc123"}
    context = tracking.TrackingContext(store, tracking.execution_run(store, "e", "pipeline", tags), tags, True)
    with tracking.stage_run(context, "train_vae") as trained:
        tracking.log_dataset(tmp_path / "prepared", manifest, context="training")
        time.sleep(1.0)
    with tracking.stage_run(context, "evaluate") as evaluated:
        time.sleep(0.6)
    client = MlflowClient()
    assert any(key.startswith("system/cpu_utilization") for key in client.get_run(trained).data.metrics)
    assert not any(key.startswith("system/") for key in client.get_run(evaluated).data.metrics)  # training only
    (logged,) = client.get_run(trained).inputs.dataset_inputs
    assert logged.dataset.name == "glyphs-balanced" and logged.dataset.digest == "ab" * 8
    assert {t.key: t.value for t in logged.tags}["mlflow.data.context"] == "training"
    assert '"label"' in logged.dataset.schema


def _logged_vae(tmp_path) -> tuple[VAE, tracking.LoggedNetwork]:
    """A tiny VAE saved as a weights file and logged (inside an active run)."""
    vae = VAE(latent_dim=2, channels=(2, 2, 4, 4)).eval()
    weights = tmp_path / "vae.pt"
    model_files.save_model(weights, "vae", {"latent_dim": 2, "channels": [2, 2, 4, 4]}, vae.state_dict(), ("A", "B"))
    return vae, tracking.log_network(vae, weights, "vae", "vae", (torch.rand(2, 1, 32, 32),),
                                     lambda m, p: m.encode_mean(p[0]))


def test_logged_model_loads_back_and_registers_with_candidate(store, tmp_path):
    probe = torch.rand(2, 1, 32, 32)
    with tracking.stage_run(_context(store), "train_vae"):
        vae, logged = _logged_vae(tmp_path)
        version = tracking.register_version(logged.model_uri, "crypson-vae", {"git_commit": "abc123", **logged.tags},
                                            "test model")
    client = MlflowClient()
    registered = client.get_model_version_by_alias("crypson-vae", tracking.CANDIDATE)
    assert str(registered.version) == version == "1"
    assert registered.tags["git_commit"] == "abc123"
    assert registered.tags["weights_sha256"] == tracking.file_sha256(tmp_path / "vae.pt")
    loaded, classes = tracking.load_registered_network("crypson-vae", version, "vae")
    assert classes == ("A", "B") and torch.allclose(loaded.encode_mean(probe), vae.encode_mean(probe))
    # The version is also a pyfunc (models from code): images in, latent means out.
    served = mlflow.pyfunc.load_model("models:/crypson-vae@candidate")
    out = served.predict(probe.reshape(2, -1).numpy())
    assert torch.allclose(torch.from_numpy(out), vae.encode_mean(probe), atol=1e-6)
    stored = Path(mlflow.artifacts.download_artifacts("models:/crypson-vae/1"))
    # Models from code: MLflow's code loader, no pickled python_model.pkl.
    assert not list(stored.rglob("*.pkl"))
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in (stored / "MLmodel").read_text()


def test_versions_carry_schema_and_rank_by_what_evaluation_measured(store, tmp_path):
    """Two candidate VAEs, each scored by an evaluation run: the registry ranks them by accuracy and by
    attacker advantage (MLflow 3 LoggedModel metrics), and each version page has its schema."""
    scored = {}
    for index, (accuracy, advantage) in enumerate(((0.91, 0.004), (0.97, 0.012))):
        folder = tmp_path / f"m{index}"
        folder.mkdir()
        with tracking.stage_run(_context(store, f"exec-{index}"), "train_vae"):
            _, logged = _logged_vae(folder)
        with tracking.stage_run(_context(store, f"exec-{index}"), "evaluate"):
            tracking.log_scored_models({"accuracy_real": accuracy, "default_scheme_max_advantage": advantage,
                                        "unmeasured": float("nan")}, [logged.model_id, ""])
            evaluate_run = mlflow.active_run().info.run_id
        scored[logged.model_id] = evaluate_run
    by_accuracy = mlflow.search_logged_models(experiment_ids=[store], output_format="list",
                                              order_by=[{"field_name": "metrics.accuracy_real", "ascending": False}])
    by_advantage = mlflow.search_logged_models(experiment_ids=[store], output_format="list",
                                               order_by=[{"field_name": "metrics.default_scheme_max_advantage"}])
    first, second = list(scored)
    assert [m.model_id for m in by_accuracy] == [second, first]
    assert [m.model_id for m in by_advantage] == [first, second]
    assert {m.key: m.value for m in by_accuracy[0].metrics} == {"accuracy_real": 0.97,
                                                                 "default_scheme_max_advantage": 0.012}
    # the evaluate run records which model it scored
    inputs = MlflowClient().get_run(scored[second]).inputs
    assert [m.model_id for m in inputs.model_inputs] == [second]
    info = mlflow.models.get_model_info(f"models:/{second}")
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 1024)
    assert info.signature.outputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 2)


class _Planted:
    """What an attacker with write access to the store plants: unpickling it runs code."""

    def __reduce__(self):
        return (Path.touch, (Path("pwned"),))


def _register_file(store, tmp_path, payload_path: Path, sha256: str | None) -> str:
    """Register a version whose weights artifact is `payload_path`, recording `sha256` (None: none)."""
    with tracking.stage_run(_context(store), "train_vae"):
        _, logged = _logged_vae(tmp_path)
    tags = {"weights_file": "vae.pt"} | ({"weights_sha256": sha256} if sha256 else {})
    version = tracking.register_version(logged.model_uri, "crypson-vae", tags, "test model")
    # Overwrite the stored weights file in the artifact store, as an attacker with write access would.
    location = MlflowClient().get_model_version_download_uri("crypson-vae", version)
    Path(urlparse(location).path, "artifacts", "vae.pt").write_bytes(payload_path.read_bytes())
    return version


def test_a_planted_pickle_in_the_store_is_refused_and_never_runs(store, tmp_path):
    planted = tmp_path / "planted.pt"
    torch.save({"format": 1, "kind": "vae", "hparams": _Planted(), "classes": [], "state_dict": {}}, planted)
    # An attacker who can also write the registry records the planted file's own hash.
    version = _register_file(store, tmp_path, planted, tracking.file_sha256(planted))
    with pytest.raises(tracking.WeightsIntegrityError, match=f"crypson-vae v{version}: vae.pt is not a weights-only"):
        tracking.load_registered_network("crypson-vae", version, "vae")
    assert not (tmp_path / "pwned").exists()


def test_a_changed_weights_file_is_refused_naming_the_model_and_version(store, tmp_path):
    other = tmp_path / "other.pt"
    model_files.save_model(other, "vae", {"latent_dim": 2, "channels": [2, 2, 4, 4]},
                         VAE(latent_dim=2, channels=(2, 2, 4, 4)).state_dict(), ("A", "B"))
    version = _register_file(store, tmp_path, other, "0" * 64)
    with pytest.raises(tracking.WeightsIntegrityError,
                       match=f"crypson-vae v{version}: weights file vae.pt has SHA-256 [0-9a-f]{{64}}, but 0{{64}}"):
        tracking.load_registered_network("crypson-vae", version, "vae")
    unhashed = _register_file(store, tmp_path, other, None)
    with pytest.raises(tracking.WeightsIntegrityError, match=f"crypson-vae v{unhashed} records no weights SHA-256"):
        tracking.load_registered_network("crypson-vae", unhashed, "vae")


def test_failed_alias_leaves_no_version(store, monkeypatch, tmp_path):
    with tracking.stage_run(_context(store), "train_vae"):
        uri = _logged_vae(tmp_path)[1].model_uri

        def refuse(*args, **kwargs):
            raise mlflow.exceptions.MlflowException("registry unavailable")

        monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refuse)
        with pytest.raises(mlflow.exceptions.MlflowException, match="registry unavailable"):
            tracking.register_version(uri, "crypson-vae", {}, "test model")
    assert MlflowClient().search_model_versions("name='crypson-vae'") == []


def test_champion_moves_only_when_set(store, tmp_path):
    with tracking.stage_run(_context(store), "train_vae"):
        uri = _logged_vae(tmp_path)[1].model_uri
        first = tracking.register_version(uri, "crypson-vae", {}, "v")
        second = tracking.register_version(uri, "crypson-vae", {}, "v")
    assert tracking.champion_versions(["crypson-vae"]) == {"crypson-vae": None}
    tracking.set_champion({"crypson-vae": first})
    assert tracking.champion_versions(["crypson-vae"]) == {"crypson-vae": "1"}
    assert str(MlflowClient().get_model_version_by_alias("crypson-vae", tracking.CANDIDATE).version) == second


def test_champion_moves_all_or_none(store, monkeypatch, tmp_path):
    with tracking.stage_run(_context(store), "train_vae"):
        uri = _logged_vae(tmp_path)[1].model_uri
        for name in ("crypson-vae", "crypson-cgan"):
            tracking.register_version(uri, name, {}, "v")
            tracking.register_version(uri, name, {}, "v")
    tracking.set_champion({"crypson-vae": "1", "crypson-cgan": "1"})
    original = MlflowClient.set_registered_model_alias

    def fail_for_cgan(self, name, alias, version):
        if name == "crypson-cgan" and version == "2":
            raise mlflow.exceptions.MlflowException("registry unavailable")
        return original(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", fail_for_cgan)
    with pytest.raises(mlflow.exceptions.MlflowException):
        tracking.set_champion({"crypson-vae": "2", "crypson-cgan": "2"})
    assert tracking.champion_versions(["crypson-vae", "crypson-cgan"]) == {"crypson-vae": "1", "crypson-cgan": "1"}


def test_configure_takes_the_experiment_another_process_just_created(store, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    created_elsewhere = MlflowClient(uri).create_experiment("raced", artifact_location=(tmp_path / "a").as_uri())
    real_lookup, calls = mlflow.get_experiment_by_name, []

    def lookup(name):  # the first lookup ran before the other process's create
        calls.append(name)
        return None if len(calls) == 1 else real_lookup(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", lookup)
    assert tracking.configure(uri, "raced", tmp_path / "artifacts") == created_elsewhere


def test_an_alias_moved_by_two_processes_at_once_is_moved_again(store, monkeypatch, tmp_path):
    """The loser of two concurrent alias moves gets a unique-key error from a SQL store; moving it again works.
    An alias that keeps failing still raises, after ALIAS_ATTEMPTS tries."""
    client = MlflowClient()
    client.create_registered_model("raced")
    version = client.create_model_version("raced", (tmp_path / "model").as_uri()).version
    calls = []
    move = MlflowClient.set_registered_model_alias

    def refused_once(self, name, alias, number):
        calls.append(alias)
        if len(calls) == 1:
            raise mlflow.exceptions.MlflowException('duplicate key value violates unique constraint "registered_model_alias_pk"')
        move(self, name, alias, number)

    monkeypatch.setattr(tracking.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refused_once)
    tracking.set_alias(client, "raced", "candidate", version)
    assert calls == ["candidate", "candidate"]
    assert client.get_model_version_by_alias("raced", "candidate").version == version

    def always_refused(self, name, alias, number):
        calls.append(alias)
        raise mlflow.exceptions.MlflowException("permission denied")

    calls.clear()
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", always_refused)
    with pytest.raises(mlflow.exceptions.MlflowException, match="permission denied"):
        tracking.set_alias(client, "raced", "champion", version)
    assert len(calls) == tracking.ALIAS_ATTEMPTS
