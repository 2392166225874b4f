"""crypson.kfp.launcher: a training stage as a TrainJob, against a fake Kubernetes API.

The fake keeps TrainJobs in a dict and moves them through the conditions the Trainer controller sets
(`Complete`, `Failed` with a reason and message); the launcher's create / attach / delete-and-recreate,
its failure message, its SIGTERM clean-up and its artifacts in and out are checked on it.
"""

import json
import os
import signal
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from crypson.kfp import launcher, runtime, trainjob
from crypson.layout import Layout

RUN_ID = "0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5"
NAME = trainjob.trainjob_name("train_vae", RUN_ID)


def done(kind: str, reason: str = "", message: str = "") -> dict:
    return {"conditions": [{"type": "Created", "status": "True"},
                           {"type": kind, "status": "True", "reason": reason, "message": message}]}


class FakeTrainJobs:
    """TrainJobs by name; `script` gives the statuses that successive reads after creation see."""

    def __init__(self, existing: dict | None = None, script: tuple[dict, ...] = ({}, done("Complete"))) -> None:
        self.jobs = {NAME: existing} if existing else {}
        self.script, self.calls = list(script), []
        self.on_create = None

    def get(self, name: str) -> dict | None:
        self.calls.append(("get", name))
        job = self.jobs.get(name)
        if job is not None and self.script and job.get("created_here"):
            job["status"] = self.script.pop(0)
        return job

    def create(self, manifest: dict) -> dict:
        self.calls.append(("create", manifest["metadata"]["name"]))
        self.jobs[manifest["metadata"]["name"]] = {**manifest, "created_here": True}
        if self.on_create:
            self.on_create(manifest)
        return manifest

    def delete(self, name: str) -> None:
        self.calls.append(("delete", name))
        self.jobs.pop(name, None)


def manifest() -> dict:
    return {"metadata": {"name": NAME}, "spec": {"trainer": {"numNodes": 2, "numProcPerNode": 4}}}


def test_creates_the_trainjob_and_waits_for_complete():
    jobs, log = FakeTrainJobs(script=({}, {"conditions": [{"type": "Created", "status": "True"}]}, done("Complete"))), []
    finished = launcher.run_to_completion(jobs, manifest(), poll_s=0, sleep=lambda s: None, log=log.append)
    assert launcher.condition(finished, "Complete") is not None
    assert [call for call, _ in jobs.calls].count("create") == 1
    assert log[0] == f"TrainJob {NAME}: created (2 nodes x 4 processes)" and log[-1] == f"TrainJob {NAME}: complete"


def test_a_failed_trainjob_fails_the_task_with_its_condition():
    jobs = FakeTrainJobs(script=({}, done("Failed", "DeadlineExceeded", "TrainJob exceeded its activeDeadlineSeconds")))
    with pytest.raises(RuntimeError, match=f"TrainJob {NAME} failed: DeadlineExceeded: TrainJob exceeded its "
                                           "activeDeadlineSeconds"):
        launcher.run_to_completion(jobs, manifest(), poll_s=0, sleep=lambda s: None, log=lambda line: None)


def test_a_retry_attaches_to_a_running_trainjob_and_replaces_a_failed_one():
    running = {**manifest(), "status": {"conditions": [{"type": "Created", "status": "True"}]}}
    jobs, log = FakeTrainJobs(existing=running), []
    running["status"] = done("Complete")  # it finishes while the retry watches
    launcher.run_to_completion(jobs, manifest(), poll_s=0, sleep=lambda s: None, log=log.append)
    assert "create" not in [call for call, _ in jobs.calls] and "attached" in log[0]

    failed = {**manifest(), "status": done("Failed", "BackoffLimitExceeded", "node-1 exited 1")}
    jobs, log = FakeTrainJobs(existing=failed), []
    launcher.run_to_completion(jobs, manifest(), poll_s=0, sleep=lambda s: None, log=log.append)
    assert [call for call, _ in jobs.calls][:4] == ["get", "delete", "get", "create"]
    assert "BackoffLimitExceeded: node-1 exited 1 (an earlier attempt); deleting it" in log[0]


def test_a_trainjob_deleted_under_the_launcher_fails_it():
    jobs = FakeTrainJobs()
    jobs.on_create = lambda manifest: jobs.jobs.clear()  # someone deletes it as soon as it exists
    with pytest.raises(RuntimeError, match=f"TrainJob {NAME} was deleted while it ran"):
        launcher.run_to_completion(jobs, manifest(), poll_s=0, sleep=lambda s: None, log=lambda line: None)


def test_sigterm_deletes_the_trainjob_before_the_launcher_exits():
    jobs = FakeTrainJobs()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        with launcher.deleted_on_termination(jobs, NAME):
            os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.code == 128 + signal.SIGTERM and ("delete", NAME) in jobs.calls
    assert signal.getsignal(signal.SIGTERM) == before


def test_run_stage_lays_out_inputs_in_the_workspace_and_returns_the_stages_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    workspace, prepared = tmp_path / "kfp-workspace", tmp_path / "artifacts" / "prepared"
    prepared.mkdir(parents=True)
    (prepared / "classes.json").write_text('["a", "b"]')
    params = json.dumps({"vae": {"epochs": 1}, "distributed": {"nodes": 2, "gpus_per_node": 4}})
    root = workspace / "trainjobs" / "train_vae"
    task_config = {"resources": {"limits": {"nvidia.com/gpu": "4"}},
                   "volumes": [{"name": "kfp-workspace", "persistentVolumeClaim": {"claimName": "r-kfp-workspace"}}],
                   "volume_mounts": [{"name": "kfp-workspace", "mountPath": str(workspace)}]}

    def rank_zero_writes_outputs(created: dict) -> None:  # what the TrainJob's rank 0 leaves in the workspace
        assert (root / "params.json").read_text() == params
        assert json.loads((Layout(root).prepared / "classes.json").read_text()) == ["a", "b"]
        layout = Layout(root)
        layout.model_dir("vae").mkdir(parents=True)
        (layout.model_dir("vae") / "registration.json").write_text('{"name": "crypson-vae", "version": "3"}')
        layout.metrics("train_vae").parent.mkdir(parents=True)
        layout.metrics("train_vae").write_text('{"loss": 1.5}')

    jobs = FakeTrainJobs()
    jobs.on_create = rank_zero_writes_outputs
    output = tmp_path / "artifacts" / "vae"
    results = launcher.run_stage("train_vae", params, {"prepared": str(prepared)}, {"vae": str(output)},
                                 run_id=RUN_ID, git_commit="abc", workspace=str(workspace), image="img:1",
                                 task_config=task_config, deadline_s=600, namespace="kubeflow", jobs=jobs, poll_s=0)
    assert results == {"loss": 1.5}
    assert runtime.registration(str(output)) == {"name": "crypson-vae", "version": "3"}
    created = jobs.jobs[NAME]
    assert created["spec"]["trainer"]["command"][-5:] == ["--params", f"{root}/params.json", "--root", str(root),
                                                          "--quiet"]
    assert created["metadata"]["namespace"] == "kubeflow" and created["spec"]["activeDeadlineSeconds"] == 600
    assert {"name": "CRYPSON_GIT_COMMIT", "value": "abc"} in created["spec"]["trainer"]["env"]


def test_the_component_body_fills_the_model_and_metrics_artifacts(tmp_path, monkeypatch):
    """run_component with kfp's own TaskConfig and artifacts: what a `<stage>_trainjob` component runs."""
    from kfp.dsl import Metrics, Model, TaskConfig

    model, metrics = Model(uri="", name="vae"), Metrics(uri="", name="metrics")
    model.path = str(tmp_path / "vae")  # what the KFP executor sets from the task's output artifacts
    metrics.path = str(tmp_path / "metrics")
    seen = {}

    def run_stage(stage, params, inputs, outputs, **launch):
        seen.update(stage=stage, outputs=outputs, launch=launch)
        Path(outputs["vae"]).mkdir()
        (Path(outputs["vae"]) / "registration.json").write_text('{"name": "crypson-vae", "version": "7"}')
        return {"loss": 0.25, "note": "text is not a metric"}

    monkeypatch.setattr(launcher, "run_stage", run_stage)
    config = TaskConfig(node_selector={"cloud.google.com/gke-nodepool": "gpu-pool"})
    launcher.run_component("train_vae", "{}", {"prepared": "/p"}, model, metrics, config, run_id=RUN_ID,
                           git_commit="", workspace="/kfp-workspace", image="img:1", deadline_s=60)
    assert seen["stage"] == "train_vae" and seen["outputs"] == {"vae": model.path}
    assert seen["launch"]["task_config"]["node_selector"] == {"cloud.google.com/gke-nodepool": "gpu-pool"}
    assert model.metadata == {"name": "crypson-vae", "version": "7"} and metrics.metadata == {"loss": 0.25}
    assert json.loads(Path(metrics.path).read_text()) == {"loss": 0.25}


def test_run_stage_refuses_a_relative_embedded_tracking_store_before_launching(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    jobs = FakeTrainJobs()
    with pytest.raises(ValueError, match="is relative"):
        launcher.run_stage("train_vae", "{}", {}, {}, run_id=RUN_ID, git_commit="", workspace=str(tmp_path),
                           image="img:1", task_config={}, deadline_s=600, namespace="kubeflow", jobs=jobs)
    assert jobs.calls == []


class FakeCustomObjects:
    """kubernetes.client.CustomObjectsApi's three calls, answering with `status` errors where set."""

    def __init__(self, status: int | None = None) -> None:
        self.status, self.calls = status, []

    def _answer(self, call: str, **arguments) -> dict:
        self.calls.append((call, arguments))
        if self.status:
            raise ApiException(status=self.status)
        return {"metadata": {"name": arguments.get("name", "")}}

    def get_namespaced_custom_object(self, **arguments):
        return self._answer("get", **arguments)

    def create_namespaced_custom_object(self, **arguments):
        return self._answer("create", **arguments)

    def delete_namespaced_custom_object(self, **arguments):
        return self._answer("delete", **arguments)


def test_kubernetes_trainjobs_address_the_trainer_api_and_read_404_as_absent():
    api = FakeCustomObjects()
    jobs = launcher.KubernetesTrainJobs("kubeflow", api)
    assert jobs.get(NAME) == {"metadata": {"name": NAME}}
    jobs.delete(NAME)
    where = {"group": "trainer.kubeflow.org", "version": "v1alpha1", "namespace": "kubeflow", "plural": "trainjobs"}
    assert api.calls == [("get", {**where, "name": NAME}),
                         ("delete", {**where, "name": NAME, "propagation_policy": "Foreground"})]
    missing = launcher.KubernetesTrainJobs("kubeflow", FakeCustomObjects(404))
    assert missing.get(NAME) is None
    missing.delete(NAME)  # already gone: nothing to do
    with pytest.raises(ApiException):
        launcher.KubernetesTrainJobs("kubeflow", FakeCustomObjects(403)).get(NAME)  # RBAC missing: loud


def test_stage_root_is_in_the_workspace():
    assert launcher.stage_root("/kfp-workspace", "train_cgan") == Path("/kfp-workspace/trainjobs/train_cgan")
    with pytest.raises(ValueError, match="not an absolute path"):
        launcher.stage_root("kfp-workspace", "train_cgan")


def test_inputs_are_laid_out_only_for_a_trainjob_about_to_be_created():
    """Re-copying the inputs under a running TrainJob would truncate files its ranks may be reading."""
    laid_out = []
    running = {**manifest(), "status": done("Complete")}
    launcher.run_to_completion(FakeTrainJobs(existing=running), manifest(), poll_s=0, sleep=lambda s: None,
                               log=lambda line: None, before_create=lambda: laid_out.append("attached"))
    assert laid_out == []
    failed = {**manifest(), "status": done("Failed", "BackoffLimitExceeded", "")}
    jobs = FakeTrainJobs(existing=failed)
    jobs.on_create = lambda created: laid_out.append("created")
    launcher.run_to_completion(jobs, manifest(), poll_s=0, sleep=lambda s: None, log=lambda line: None,
                               before_create=lambda: laid_out.append("laid out"))
    assert laid_out == ["laid out", "created"]


def test_kfps_executor_runs_a_launcher_component_with_the_task_config_the_backend_injects(tmp_path, monkeypatch):
    """kfp's own executor (what `python -m kfp.dsl.executor_main` runs in the pod) on a launcher component: the
    backend's TaskConfig struct (camelCase, as driver.go marshals it) reaches the launcher as snake_case fields,
    and the output artifacts carry the registration and metrics, as from the single-GPU component."""
    from kfp.dsl.executor import Executor

    from crypson.kfp.project import load_pipeline_module

    load_pipeline_module(Path(__file__).resolve().parents[2])  # puts components/ on sys.path
    from components import stages

    seen = {}

    def run_stage(stage, params, inputs, outputs, **launch):
        seen.update(stage=stage, inputs=inputs, task_config=launch["task_config"], image=launch["image"])
        Path(outputs["vae"]).mkdir(parents=True)
        (Path(outputs["vae"]) / "registration.json").write_text('{"name": "crypson-vae", "version": "2"}')
        return {"val_loss": 0.5}

    monkeypatch.setattr(launcher, "run_stage", run_stage)

    def artifact(name: str, kind: str) -> dict:
        return {"artifacts": [{"name": name, "type": {"schemaTitle": f"system.{kind}"}, "uri": str(tmp_path / name),
                               "metadata": {}}]}

    task_config = {"nodeSelector": {"cloud.google.com/gke-nodepool": "gpu-pool"},
                   "resources": {"limits": {"nvidia.com/gpu": "4"}},
                   "volumeMounts": [{"name": "kfp-workspace", "mountPath": "/kfp-workspace"}]}
    executor_input = {
        "inputs": {"parameterValues": {"params": "{}", "run_id": RUN_ID, "git_commit": "", "image": "img:1",
                                       "workspace": "/kfp-workspace", "deadline_s": 60, "task_config": task_config},
                   "artifacts": {"prepared": artifact("prepared", "Dataset")}},
        "outputs": {"artifacts": {"vae": artifact("vae", "Model"), "metrics": artifact("metrics", "Metrics")},
                    "outputFile": str(tmp_path / "out" / "executor_output.json")}}
    Executor(executor_input, stages.train_vae_trainjob).execute()
    assert seen["stage"] == "train_vae" and seen["inputs"] == {"prepared": str(tmp_path / "prepared")}
    assert seen["task_config"]["node_selector"] == {"cloud.google.com/gke-nodepool": "gpu-pool"}
    assert seen["task_config"]["volume_mounts"] == task_config["volumeMounts"] and seen["image"] == "img:1"
    written = json.loads((tmp_path / "out" / "executor_output.json").read_text())["artifacts"]
    assert written["vae"]["artifacts"][0]["metadata"] == {"name": "crypson-vae", "version": "2"}
    assert written["metrics"]["artifacts"][0]["metadata"] == {"val_loss": 0.5}
