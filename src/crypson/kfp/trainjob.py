"""A Kubeflow Trainer v2 TrainJob that runs one Crypson training stage under torchrun: the manifest.

A pure function of plain values (crypson.kfp.launcher creates and watches the object), so every field
is tested offline, and validated against the vendored Trainer CRDs (infra/kubeflow/trainer/crds/).
The API is `trainer.kubeflow.org/v1alpha1` of Kubeflow Trainer TRAINER_VERSION: still alpha, and its
fields change between minors (v2.3 replaced `podSpecOverrides` with `runtimePatches`), so the version is
pinned here, in the vendored CRDs and in the install notes (infra/kubeflow/README.md) together.

What the TrainJob gets:
- `runtimeRef`: the ClusterTrainingRuntime `torch-distributed`, whose torch plugin gives every node
  PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT; torchrun reads
  them as its defaults, so the command is torchrun with the stage and nothing about the rendezvous.
- `trainer`: the pipeline's image, `numNodes`, `numProcPerNode` (one process per GPU) and
  `resourcesPerNode` = the launcher task's resources (KFP passes them through, dsl.TaskConfig); the
  task's environment (MLflow settings by Secret reference) plus the run's ids.
- `runtimePatches` of the runtime's `node` job: the task's node selector, tolerations and affinity
  (the GPU pool), and its volumes (the run's workspace PVC, where the stage's inputs, outputs and
  checkpoints live) mounted into the `node` container.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

TRAINER_VERSION = "2.3.0"
GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
NODE = "node"  # the torch runtime's replicated job and its training container
PATCH_MANAGER = "crypson.kfp.launcher"  # who owns our runtime patch (the CRD keys patches by manager)
GPU = "nvidia.com/gpu"
# Set by the torch plugin for torchrun; the Trainer's webhook refuses a TrainJob that sets them itself.
RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
# Names whose literal value would put a credential into the TrainJob (and etcd): references only.
CREDENTIAL_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY", re.IGNORECASE)
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Placement:
    """The launcher task's Kubernetes settings that KFP passes through (dsl.TaskConfig), as Pod spec JSON."""

    resources: Mapping[str, Any] = field(default_factory=dict)
    env: Sequence[Mapping[str, Any]] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()
    affinity: Mapping[str, Any] = field(default_factory=dict)
    volumes: Sequence[Mapping[str, Any]] = ()
    volume_mounts: Sequence[Mapping[str, Any]] = ()

    @classmethod
    def from_task_config(cls, task_config: Mapping[str, Any]) -> Placement:
        """From the fields of kfp's dsl.TaskConfig (None where KFP passed nothing)."""
        return cls(**{name: task_config[name] for name in cls.__dataclass_fields__ if task_config.get(name)})


def trainjob_name(stage: str, run_id: str) -> str:
    """One name per (run, stage): a retried launcher finds the TrainJob of its earlier attempt."""
    return f"crypson-{stage.replace('_', '-')}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}"


def stage_command(stage: str, root: str) -> list[str]:
    """The stage under torchrun (its rendezvous from the runtime's PET_* variables), on the Layout at `root`."""
    return ["torchrun", "-m", "crypson", "stage", stage.replace("_", "-"), "--params", f"{root}/params.json",
            "--root", root, "--quiet"]


def _gpus_per_node(resources: Mapping[str, Any]) -> int:
    limits = resources.get("limits") or {}
    if GPU not in limits:
        raise ValueError(f"the launcher task passes no {GPU} limit through (resources {dict(resources)}): "
                         "the pipeline sets it with set_accelerator_limit")
    return int(str(limits[GPU]))


def _check_env(env: Sequence[Mapping[str, Any]]) -> None:
    for entry in env:
        if entry["name"] in RESERVED_ENV:
            raise ValueError(f"environment variable {entry['name']} is the torch runtime's (reserved: "
                             f"{', '.join(RESERVED_ENV)})")
        if "value" in entry and CREDENTIAL_NAME.search(entry["name"]):
            raise ValueError(f"environment variable {entry['name']} carries a literal value: a credential goes "
                             "into the TrainJob only as a secretKeyRef")


def _mounted(root: str, mounts: Sequence[Mapping[str, Any]]) -> bool:
    return any(PurePosixPath(root).is_relative_to(mount["mountPath"]) for mount in mounts)


def manifest(*, stage: str, run_id: str, image: str, root: str, nodes: int, gpus_per_node: int,
             placement: Placement, namespace: str, deadline_s: int, runtime: str = "torch-distributed",
             run_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The TrainJob of one training stage.

    Args:
        stage: a training stage (train_cgan, train_vae, train_classifier).
        run_id: the KFP run id (names the TrainJob, labels it).
        image: the pipeline's image (the launcher's own).
        root: the stage's Layout folder in the run's workspace (inputs, outputs, params.json, checkpoints).
        nodes, gpus_per_node: the run's distributed.nodes and distributed.gpus_per_node.
        placement: the launcher task's passed-through settings; its GPU limit must be gpus_per_node.
        namespace: where the TrainJob is created (the launcher's own namespace).
        deadline_s: the TrainJob's activeDeadlineSeconds: it fails, freeing its GPUs, after this long.
        runtime: the ClusterTrainingRuntime (distributed.runtime).
        run_env: name -> value set for the stage (crypson.kfp.runtime.run_environment: the KFP run id and
            the code's commit, which the stage records on its MLflow run).
    Raises:
        ValueError: a GPU limit that is not gpus_per_node, a reserved or credential environment variable
            with a value, a root outside the passed-through volumes, a run id that is no label value.
    """
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"nodes={nodes}, gpus_per_node={gpus_per_node}: each must be at least 1")
    compiled = _gpus_per_node(placement.resources)
    if compiled != gpus_per_node:
        raise ValueError(f"the pipeline task asks for {compiled} GPUs per node, but the run's params say "
                         f"distributed.gpus_per_node = {gpus_per_node}: compile the spec from these params "
                         "(crypson pipeline compile --params ...)")
    if not _mounted(root, placement.volume_mounts):
        raise ValueError(f"{root} is on none of the volumes passed to the TrainJob "
                         f"({[mount['mountPath'] for mount in placement.volume_mounts]}): its pods would not see it")
    if not LABEL_VALUE.match(run_id) or len(run_id) > 63:
        raise ValueError(f"run id {run_id!r} is not a Kubernetes label value")
    env = [*placement.env, *({"name": name, "value": value} for name, value in (run_env or {}).items())]
    _check_env(env)
    pod: dict[str, Any] = {"containers": [{"name": NODE, "volumeMounts": list(placement.volume_mounts)}],
                           "volumes": list(placement.volumes)}
    for key, value in (("nodeSelector", placement.node_selector), ("tolerations", placement.tolerations),
                       ("affinity", placement.affinity)):
        if value:
            pod[key] = value if isinstance(value, Mapping) else list(value)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": trainjob_name(stage, run_id), "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": "crypson", "app.kubernetes.io/component": "training",
                                "crypson/stage": stage.replace("_", "-"), "crypson/kfp-run-id": run_id}},
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": runtime},
            "activeDeadlineSeconds": deadline_s,
            "trainer": {"image": image, "command": stage_command(stage, root), "numNodes": nodes,
                        "numProcPerNode": gpus_per_node, "resourcesPerNode": dict(placement.resources), "env": env},
            "runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
                "replicatedJobs": [{"name": NODE, "template": {"spec": {"template": {"spec": pod}}}}]}}}}],
        },
    }
