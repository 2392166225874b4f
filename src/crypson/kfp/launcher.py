"""What a distributed training task runs: its stage as a Kubeflow Trainer TrainJob, created, watched, collected.

The launcher pod itself trains nothing and holds no GPU. It lays the stage's input artifacts out in the
run's workspace (a Layout under `trainjobs/<stage>/`, on the PVC that KFP passes through to the TrainJob),
creates the TrainJob (crypson.kfp.trainjob.manifest), polls it until its `Complete` or `Failed` condition
(polling a get every 30 s: a watch would add reconnects and resource versions for no gain at that pace),
and copies the stage's outputs from the workspace to the task's output artifacts, as the single-GPU
component (crypson.kfp.runtime.run_stage) copies them from its temporary folder. Rank 0 of the TrainJob
logs the MLflow run and registers the model, exactly as a single process does.

Failures and retries:
- A TrainJob that fails fails the task with the TrainJob's `Failed` condition (reason and message).
- The task retries (the pipeline's set_retry): the next attempt finds the failed TrainJob by its name
  (one per run and stage), deletes it, and creates it again; the stage resumes from the checkpoint that
  rank 0 left in the workspace, in the same MLflow run.
- A launcher stopped by SIGTERM (its time limit, a drained node, a terminated run) deletes its TrainJob
  first, so no TrainJob outlives its launcher holding GPUs; one killed without warning leaves it running
  until the TrainJob's own deadline, and the retry attaches to it instead of starting another.
Creating, reading and deleting TrainJobs needs RBAC for the pipeline runner's service account
(infra/kubeflow/trainer/rbac.yaml).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from crypson.files import atomic_write_bytes
from crypson.kfp import runtime, trainjob
from crypson.layout import Layout

STAGING = "trainjobs"  # the folder of the TrainJobs' stage layouts in the run's workspace
POLL_S = 30.0
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class TrainJobs(Protocol):
    """The TrainJob operations the launcher uses (KubernetesTrainJobs; a fake in the tests)."""

    def get(self, name: str) -> dict | None: ...
    def create(self, manifest: dict) -> dict: ...
    def delete(self, name: str) -> None: ...


class KubernetesTrainJobs:
    """TrainJobs of one namespace through the Kubernetes API (the `kubernetes` client, in-cluster config)."""

    def __init__(self, namespace: str, api: Any = None) -> None:
        if api is None:
            from kubernetes import client, config

            config.load_incluster_config()
            api = client.CustomObjectsApi()
        self.namespace, self.api = namespace, api

    def _where(self) -> dict[str, str]:
        return {"group": trainjob.GROUP, "version": trainjob.VERSION, "namespace": self.namespace,
                "plural": trainjob.PLURAL}

    def get(self, name: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(**self._where(), name=name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def create(self, manifest: dict) -> dict:
        return self.api.create_namespaced_custom_object(**self._where(), body=manifest)

    def delete(self, name: str) -> None:
        """Delete with its JobSet and pods (foreground: the object goes once they are gone)."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.delete_namespaced_custom_object(**self._where(), name=name, propagation_policy="Foreground")
        except ApiException as error:
            if error.status != 404:
                raise


def condition(job: Mapping[str, Any], kind: str) -> dict | None:
    """The TrainJob's condition `kind` (Complete, Failed) when its status is True, else None."""
    for entry in (job.get("status") or {}).get("conditions") or []:
        if entry.get("type") == kind and entry.get("status") == "True":
            return entry
    return None


def _failure(job: Mapping[str, Any], failed: Mapping[str, Any]) -> str:
    return (f"TrainJob {job['metadata']['name']} failed: {failed.get('reason', 'no reason')}: "
            f"{failed.get('message', 'no message')}")


def run_to_completion(jobs: TrainJobs, manifest: dict, poll_s: float = POLL_S,
                      sleep: Callable[[float], None] = time.sleep, log: Callable[[str], None] = print,
                      before_create: Callable[[], None] = lambda: None) -> dict:
    """Create the TrainJob (or attach to this run's earlier one) and wait for it to end.

    Args:
        before_create: what to do just before creating it (lay its inputs out): never while an earlier
            attempt's TrainJob runs on them.
    Returns:
        The completed TrainJob.
    Raises:
        RuntimeError: the TrainJob failed (its Failed condition's reason and message), or vanished.
    """
    name = manifest["metadata"]["name"]
    job = jobs.get(name)
    if job is not None and (failed := condition(job, "Failed")) is not None:
        log(f"{_failure(job, failed)} (an earlier attempt); deleting it, the stage resumes from its checkpoint")
        jobs.delete(name)
        while jobs.get(name) is not None:
            sleep(poll_s)
        job = None
    if job is None:
        before_create()
        jobs.create(manifest)
        log(f"TrainJob {name}: created ({manifest['spec']['trainer']['numNodes']} nodes x "
            f"{manifest['spec']['trainer']['numProcPerNode']} processes)")
    else:
        log(f"TrainJob {name}: attached to the one an earlier attempt created")
    while True:
        job = jobs.get(name)
        if job is None:
            raise RuntimeError(f"TrainJob {name} was deleted while it ran")
        if condition(job, "Complete") is not None:
            log(f"TrainJob {name}: complete")
            return job
        if (failed := condition(job, "Failed")) is not None:
            raise RuntimeError(_failure(job, failed))
        sleep(poll_s)


@contextmanager
def deleted_on_termination(jobs: TrainJobs, name: str) -> Iterator[None]:
    """On SIGTERM (Kubernetes stopping the launcher pod) delete the TrainJob, then exit 143."""
    def stop(signum: int, frame: Any) -> None:
        print(f"launcher stopped (signal {signum}): deleting TrainJob {name}", flush=True)
        jobs.delete(name)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stage_root(workspace: str, stage: str) -> Path:
    """The stage's Layout in the run's workspace: what the TrainJob's pods read and write (its checkpoints too,
    in the Layout's own checkpoints/ folder)."""
    if not Path(workspace).is_absolute():
        raise ValueError(f"workspace {workspace!r} is not an absolute path (KFP passes its workspace mount)")
    return Path(workspace) / STAGING / stage


def run_stage(stage: str, params: str, inputs: Mapping[str, str], outputs: Mapping[str, str], *, run_id: str,
              git_commit: str, workspace: str, image: str, task_config: Mapping[str, Any], deadline_s: int,
              namespace: str = "", jobs: TrainJobs | None = None, poll_s: float = POLL_S) -> dict:
    """Run a training stage as a TrainJob on artifacts (the distributed counterpart of runtime.run_stage).

    Args:
        stage: a training stage.
        params: the params the stage reads (its split_params text): `distributed` gives the topology.
        inputs, outputs: artifact name (runtime.ARTIFACTS) -> local path, as for runtime.run_stage.
        run_id, git_commit: the KFP run id and the code's commit (MLflow tags, the TrainJob's name).
        workspace: the run's workspace folder, passed through to the TrainJob as a volume.
        image: the image the TrainJob's nodes run (the pipeline's).
        task_config: the task's passed-through Kubernetes settings (kfp's dsl.TaskConfig fields).
        deadline_s: the TrainJob's activeDeadlineSeconds.
        namespace: where the TrainJob is created ("": this pod's own namespace).
        jobs: the TrainJobs API (default: the Kubernetes API with this pod's service account).
    Returns:
        The stage's result JSON (runtime.RESULTS).
    """
    config = runtime.load_params(params)
    runtime.check_tracking(config, os.environ)
    layout = Layout(stage_root(workspace, stage))

    def lay_out_inputs() -> None:
        for name, path in inputs.items():
            runtime.copy_path(Path(path), runtime.ARTIFACTS[name](layout))
        atomic_write_bytes(layout.root / "params.json", params.encode())  # the bytes its execution key hashes

    topology = config.distributed
    manifest = trainjob.manifest(
        stage=stage, run_id=run_id, image=image, root=str(layout.root), nodes=topology.nodes,
        gpus_per_node=topology.gpus_per_node, placement=trainjob.Placement.from_task_config(task_config),
        namespace=namespace or NAMESPACE_FILE.read_text().strip(), deadline_s=deadline_s,
        runtime=topology.runtime, run_env=runtime.run_environment(run_id, git_commit))
    jobs = KubernetesTrainJobs(manifest["metadata"]["namespace"]) if jobs is None else jobs
    with deleted_on_termination(jobs, manifest["metadata"]["name"]):
        run_to_completion(jobs, manifest, poll_s, before_create=lay_out_inputs)
    for name, path in outputs.items():
        runtime.copy_path(runtime.ARTIFACTS[name](layout), Path(path))
    return json.loads(runtime.RESULTS[stage](layout).read_text())


def run_component(stage: str, params: str, inputs: Mapping[str, str], model: Any, metrics: Any,
                  task_config: Any, **launch: Any) -> None:
    """The body of a TrainJob launcher component (components/stages.py, `<stage>_trainjob`).

    Args:
        stage: the training stage; its model artifact is named as the stage's model (cgan, vae, classifier).
        params, inputs: as for run_stage.
        model, metrics: the component's Output[Model] and Output[Metrics] (kfp artifacts: `path`, `metadata`,
            `log_metric`), filled as the single-GPU component fills them.
        task_config: the component's dsl.TaskConfig (a dataclass), what KFP passed through.
        launch: run_stage's keyword arguments (run_id, git_commit, workspace, image, deadline_s).
    """
    results = run_stage(stage, params, inputs, {stage.removeprefix("train_"): model.path},
                        task_config=dataclasses.asdict(task_config), **launch)
    runtime.log_metrics(metrics, results)
    model.metadata.update(runtime.registration(model.path))

