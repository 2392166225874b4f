"""The MLflow layer against a real (embedded SQLite) tracking store in a temporary folder."""

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from crypson import tracking
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


def test_logged_model_loads_back_and_registers_with_candidate(store):
    vae = VAE(latent_dim=2, channels=(2, 2, 4, 4)).eval()
    probe = (torch.rand(2, 1, 32, 32),)
    with tracking.stage_run(_context(store), "train_vae"):
        uri = tracking.log_model_verified(vae, "vae", probe, lambda m, p: m.encode_mean(p[0]))
        version = tracking.register_version(uri, "crypson-vae", {"git_commit": "abc123"}, "test model")
    client = MlflowClient()
    registered = client.get_model_version_by_alias("crypson-vae", tracking.CANDIDATE)
    assert str(registered.version) == version == "1"
    assert registered.tags["git_commit"] == "abc123"
    loaded = mlflow.pytorch.load_model("models:/crypson-vae@candidate")
    assert torch.allclose(loaded.encode_mean(probe[0]), vae.encode_mean(probe[0]))


def test_failed_alias_leaves_no_version(store, monkeypatch):
    vae = VAE(latent_dim=2, channels=(2, 2, 4, 4)).eval()
    with tracking.stage_run(_context(store), "train_vae"):
        uri = tracking.log_model_verified(vae, "vae", (torch.rand(1, 1, 32, 32),), lambda m, p: m.encode_mean(p[0]))

        def refuse(*args, **kwargs):
            raise mlflow.exceptions.MlflowException("registry unavailable")

        monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refuse)
        with pytest.raises(mlflow.exceptions.MlflowException, match="registry unavailable"):
            tracking.register_version(uri, "crypson-vae", {}, "test model")
    assert MlflowClient().search_model_versions("name='crypson-vae'") == []


def test_champion_moves_only_when_set(store):
    vae = VAE(latent_dim=2, channels=(2, 2, 4, 4)).eval()
    with tracking.stage_run(_context(store), "train_vae"):
        uri = tracking.log_model_verified(vae, "vae", (torch.rand(1, 1, 32, 32),), lambda m, p: m.encode_mean(p[0]))
        first = tracking.register_version(uri, "crypson-vae", {}, "v")
        second = tracking.register_version(uri, "crypson-vae", {}, "v")
    assert tracking.champion_versions(["crypson-vae"]) == {"crypson-vae": None}
    tracking.set_champion({"crypson-vae": first})
    assert tracking.champion_versions(["crypson-vae"]) == {"crypson-vae": "1"}
    assert str(MlflowClient().get_model_version_by_alias("crypson-vae", tracking.CANDIDATE).version) == second


def test_champion_moves_all_or_none(store, monkeypatch):
    vae = VAE(latent_dim=2, channels=(2, 2, 4, 4)).eval()
    with tracking.stage_run(_context(store), "train_vae"):
        uri = tracking.log_model_verified(vae, "vae", (torch.rand(1, 1, 32, 32),), lambda m, p: m.encode_mean(p[0]))
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
