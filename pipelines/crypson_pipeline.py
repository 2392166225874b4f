"""The Crypson pipeline on Kubeflow: wiring and placement only.

    split_params -> ingest -> prepare -> validate -+-> train_cgan -+-> train_classifier -+-> evaluate -+-> gate
                                                   +-> train_vae --+                     +-> attack ---+   If: promote

The stages are the components of components/stages.py (each calls crypson.stages); this file
decides what runs after what, where (the training steps on the GPU node pool), with which
credentials (a Kubernetes Secret, never a value in the spec), what KFP may cache, how long a step
may run and which steps retry. `crypson pipeline compile` writes pipelines/crypson_pipeline.yaml
from it, with params.yaml as the default of the `params` argument. Compiled from params whose
`distributed` section asks for more than one GPU, the three training steps are TrainJob launchers
instead (build_pipeline says how).

Params, cached like DVC: each task receives only the params keys its stage reads, the lists of
dvc.yaml (`task_params`, read from it at compile time; tests/unit/test_dvc_yaml.py checks them
against the code), and the runtime completes them with the code's defaults. KFP's cache key of a
task is made of its input values, input artifacts and component, so with its own keys as its input
a data task keeps its key when `vae.lr` changes. The cut is made by a first, light task
(`split_params`) rather than at compile time: `params` stays one pipeline argument that a
submission overrides whole (`crypson pipeline submit`, presets), and each stage gets that run's
values. The knobs a user changes in the KFP UI's run form are typed arguments laid over it:
`preset` (a name of presets/, whose files are compiled into the spec), `data_source`, `data_split`,
`cgan_epochs`, `vae_epochs`, `classifier_epochs`, `cipher_scheme` ("" and 0 keep params' value). Compile-time subsets would freeze each stage's settings into the spec, or make every
section an argument of its own that the submitter must keep consistent (`seed` is read by seven
stages).

Caching, like DVC's: KFP reuses a task's outputs when its cache key (its input values and artifacts,
its container, the names of the PVCs it mounts) matches an earlier execution's, so every task whose
inputs are the same is a cache hit, the training and scoring tasks included: after a change to
`vae.lr`, a new run reuses the data tasks and the cGAN and retrains the VAE and what follows it. A
cache hit runs nothing and logs no MLflow run, as `dvc repro` skips a stage whose inputs did not
change: the reused outputs name the MLflow run and model version of the execution that made them, and
the new run's versions (the classifier's lineage tags) point at them. Two things keep the keys stable:
no task takes the KFP run id as an input (the MLflow tasks read it from KFP_RUN_ID, which comes from
the pod's `pipeline/runid` label through the Downward API), and the training tasks keep their
checkpoints on a fixed PVC (CHECKPOINT_PVC) rather than in the run's workspace, whose PVC is named
after the run and is part of the key of every task that mounts it. Promotion is never cached: it moves
the registry's aliases, which is the point of running it. (The TrainJob launchers stage their work in
the run's workspace, so on several GPUs the training tasks are not cached across runs.)
"""


import json
from typing import Any

from kfp import dsl, kubernetes
from kfp.dsl.graph_component import GraphComponent

from components import stages
from crypson import provenance
from crypson.kfp import runtime

DEFAULT_IMAGE = "ghcr.io/crypson/crypson:0.1.0"
# Overrides DEFAULT_IMAGE at compile time; inside every task, the image it runs in (crypson.provenance.IMAGE_ENV:
# the `crypson.image` and `crypson.image_digest` tags of each MLflow run and model version).
IMAGE_ENV = provenance.IMAGE_ENV
PIPELINE_NAME = "crypson"

# The GPU node pool (infra/ creates it with this label and taint).
GPU_NODE_LABEL = ("cloud.google.com/gke-nodepool", "gpu-pool")
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
ACCELERATOR = "nvidia.com/gpu"  # the device plugin's resource name
GPUS_PER_TRAINING_TASK = 1
# Per GPU: a TrainJob node with g GPUs asks for g times these (one training process a GPU).
TRAINING_REQUESTS = {"cpu": "4", "memory": "16Gi"}
TRAINING_LIMITS = {"cpu": "8", "memory": "32Gi"}
SCORING_REQUESTS = {"cpu": "2", "memory": "8Gi"}  # evaluate and attack: CPU nodes
DATA_REQUESTS = {"cpu": "1", "memory": "4Gi"}

# Time limit of one attempt of a task, by kind, in seconds: Kubernetes fails a pod that runs longer
# (activeDeadlineSeconds through kfp-kubernetes' set_timeout; kfp 2.17's dsl has no task timeout), so a
# hung step frees its node and its GPU. The clock starts when a node accepts the pod, image pull included.
# Estimates with a wide margin, not measurements: the default run takes 10-30 minutes end to end on two CPU
# cores, and nothing has run on a cluster yet; a schedule beyond presets/report.yaml's needs larger limits.
TIMEOUT_S = {"light": 30 * 60, "data": 2 * 3600, "training": 4 * 3600, "scoring": 4 * 3600}
# A TrainJob launcher outlives its TrainJob (whose own deadline is TIMEOUT_S["training"]) by the time it takes to
# copy the inputs into the workspace, schedule the nodes and pull the image, so it reports the TrainJob's
# DeadlineExceeded instead of dying first.
TIMEOUT_S["launcher"] = TIMEOUT_S["training"] + 30 * 60
# Training tasks retry twice, 2 then 4 minutes after a failure, for what goes away by itself (a reclaimed
# GPU node, an MLflow or S3 restart). A retry resumes at the epoch after the last checkpoint, in the same
# MLflow run: the checkpoints live on CHECKPOINT_PVC (a TrainJob's in the run's workspace), not in the pod.
TRAINING_RETRIES = 2
RETRY_BACKOFF_S = 120
RETRY_BACKOFF_FACTOR = 2.0
# Argo retries no more once backoff_max_duration has passed since the first attempt started, and ends the
# retries there (KFP's default, one hour, would leave a training that failed after an hour unretried):
# room for every attempt's full time limit and the waits between them. So a step that hangs every time
# holds its GPU for at most three time limits, 12 hours.
def retry_window_s(kind: str) -> int:
    """Every attempt's full time limit and the waits between them."""
    return (TRAINING_RETRIES + 1) * TIMEOUT_S[kind] + int(
        sum(RETRY_BACKOFF_S * RETRY_BACKOFF_FACTOR ** retry for retry in range(TRAINING_RETRIES)))


TRAINING_RETRY_WINDOW_S = retry_window_s("training")

# The training tasks' checkpoints: a ReadWriteMany PVC of fixed name that infra/ creates beside the pipeline
# (the cGAN and VAE tasks run at once, maybe on two GPU nodes), mounted into every single-GPU training task;
# each task keeps its checkpoint in a subfolder named after its content (crypson.kfp.runtime.task_checkpoints),
# and a finished task deletes it. A fixed name keeps the tasks' cache keys the same from run to run.
CHECKPOINT_PVC = "crypson-checkpoints"
CHECKPOINT_MOUNT = "/crypson/checkpoints"

# The run's workspace: a volume KFP creates for each run and mounts into every task that names it
# (dsl.WORKSPACE_PATH_PLACEHOLDER), kept while the run lasts: the TrainJob launchers stage their stage's
# inputs, outputs and checkpoints there for the TrainJob's pods (crypson.kfp.launcher). ReadWriteMany: the
# cGAN and VAE TrainJobs run at once; the storage class is the cluster's KFP default for workspaces
# (infra/kubeflow/README.md: on GKE a Filestore class). A pipeline on one GPU has no workspace.
WORKSPACE = dsl.PipelineConfig(workspace=dsl.WorkspaceConfig(
    size="10Gi", kubernetes=dsl.KubernetesWorkspaceConfig(pvcSpecPatch={"accessModes": ["ReadWriteMany"]})))
# The KFP run id, for the MLflow tags, from the pod's label (KFP's API server labels every pod of a run).
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"

# MLflow server and S3 store: environment variables from this Secret (infra/ creates it).
MLFLOW_SECRET = "crypson-mlflow"
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def per_gpu(quantities: dict[str, str], gpus: int) -> dict[str, str]:
    """`gpus` times a per-GPU {"cpu": "4", "memory": "16Gi"}."""
    number, unit = quantities["memory"][:-2], quantities["memory"][-2:]
    return {"cpu": str(int(quantities["cpu"]) * gpus), "memory": f"{int(number) * gpus}{unit}"}


def on_gpu_pool(task: dsl.PipelineTask, gpus: int = GPUS_PER_TRAINING_TASK) -> dsl.PipelineTask:
    """Schedule a training task (or, for a TrainJob launcher, each of its nodes) on `gpus` GPUs of the GPU
    node pool, with room for its data loading."""
    requests, limits = per_gpu(TRAINING_REQUESTS, gpus), per_gpu(TRAINING_LIMITS, gpus)
    task.set_accelerator_type(ACCELERATOR).set_accelerator_limit(gpus)
    task.set_cpu_request(requests["cpu"]).set_memory_request(requests["memory"])
    task.set_cpu_limit(limits["cpu"]).set_memory_limit(limits["memory"])
    kubernetes.add_node_selector(task, label_key=GPU_NODE_LABEL[0], label_value=GPU_NODE_LABEL[1])
    kubernetes.add_toleration(task, **GPU_TAINT)
    return task


def limited(task: dsl.PipelineTask, kind: str) -> dsl.PipelineTask:
    """Fail the task's pod after TIMEOUT_S[kind] seconds (each attempt's own pod, when it retries)."""
    return kubernetes.set_timeout(task, TIMEOUT_S[kind])


def training(task: dsl.PipelineTask, backoff_s: int = RETRY_BACKOFF_S, gpus: int = GPUS_PER_TRAINING_TASK,
             kind: str = "training", checkpoints: str = CHECKPOINT_MOUNT) -> dsl.PipelineTask:
    """A training task: on the GPU pool, time-limited, retried with exponential back-off, logged to MLflow,
    its checkpoints on CHECKPOINT_PVC (mounted at `checkpoints`), cached across runs.
    For a TrainJob launcher (kind "launcher") the placement is its TrainJob nodes' (passed through), its
    checkpoints are in the run's workspace, and it is not cached (that PVC is the run's)."""
    task.set_retry(num_retries=TRAINING_RETRIES, backoff_duration=f"{backoff_s}s",
                   backoff_factor=RETRY_BACKOFF_FACTOR, backoff_max_duration=f"{retry_window_s(kind)}s")
    if kind == "training":
        kubernetes.mount_pvc(task, pvc_name=CHECKPOINT_PVC, mount_path=checkpoints)
        task.set_env_variable(runtime.CHECKPOINTS_ENV, checkpoints)
    return tracked(limited(on_gpu_pool(task, gpus), kind), cached=kind == "training")


def with_requests(task: dsl.PipelineTask, requests: dict[str, str]) -> dsl.PipelineTask:
    return task.set_cpu_request(requests["cpu"]).set_memory_request(requests["memory"])


def with_mlflow_secret(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """MLflow and S3 settings as environment variables from the Secret, by reference."""
    return kubernetes.use_secret_as_env(task, secret_name=MLFLOW_SECRET,
                                        secret_key_to_env={key: key for key in MLFLOW_SECRET_KEYS})


def tracked(task: dsl.PipelineTask, cached: bool) -> dsl.PipelineTask:
    """A task that logs to MLflow: the Secret's settings, the KFP run id in KFP_RUN_ID (from the pod's label:
    an input would change the task's cache key every run), cached or not (see the module's docstring)."""
    kubernetes.use_field_path_as_env(with_mlflow_secret(task), env_name=runtime.RUN_ID_ENV, field_path=RUN_ID_FIELD)
    return task.set_caching_options(cached)


def build_pipeline(params: str, task_params: dict[str, list[str]], image: str = DEFAULT_IMAGE,
                   retry_backoff_s: int = RETRY_BACKOFF_S, presets: dict[str, dict] | None = None,
                   nodes: int = 1, gpus_per_node: int = 1, checkpoints: str = CHECKPOINT_MOUNT) -> GraphComponent:
    """The pipeline, with `params` (params.yaml text) as the default of its `params` argument.

    With nodes x gpus_per_node > 1 (params' `distributed`, read at compile time by
    crypson.kfp.project.compile_spec) each training stage is a TrainJob launcher (components/stages.py,
    `<stage>_trainjob`): a light task that runs the stage as a Kubeflow Trainer TrainJob on `nodes` nodes of
    `gpus_per_node` GPUs and returns the same artifacts. Its GPUs, GPU-pool node selector and toleration
    are set on the task as for one GPU, and KFP passes them, with the MLflow Secret's environment
    references and the run's workspace PVC, to the launcher as its dsl.TaskConfig
    (task_config_passthroughs), which puts them on the TrainJob; the launcher pod itself gets only the
    environment and the workspace. The switch is at compile time, not a run parameter with dsl.If: the
    TrainJob's per-node GPUs are a resource of the task, fixed in the spec, and one kind of training task
    keeps the spec's wiring, cache keys and tests as they are. A run whose params ask for another topology
    than the spec's fails loudly: a single-GPU stage refuses params above one process
    (crypson.train.distributed.check_world), a launcher refuses a gpus_per_node other than its task's GPUs
    (crypson.kfp.trainjob.manifest); the number of nodes is the run's own (it is no resource of the task).

    Args:
        params: params.yaml text; every stage reads its settings from it, as under `dvc repro`.
        task_params: task -> the params keys it receives (crypson.kfp.project.task_params: dvc.yaml's lists).
        image: the container image every task runs in.
        retry_backoff_s: the wait before a failed training task's first retry (doubling after); kfp.local
            runs pass seconds, a cluster waits minutes for a node to come back.
        presets: name -> partial params (crypson.kfp.project.load_presets: presets/*.yaml), what the run
            parameter `preset` may name.
        nodes, gpus_per_node: the training stages' topology (params' `distributed`); 1 x 1: one GPU, in the task.
        checkpoints: the single-GPU training tasks' checkpoint folder: CHECKPOINT_PVC's mount path; kfp.local,
            which mounts no PVC, passes a folder of this machine.
    """
    c = stages.build(image)
    distributed = nodes * gpus_per_node > 1

    @dsl.pipeline(name=PIPELINE_NAME, description="Crypson: cGAN + VAE + latent classifier for keyed "
                  "latent-space text encryption; trains, evaluates, attacks and promotes the models.",
                  pipeline_config=WORKSPACE if distributed else None)
    def crypson(params: str = params, preset: str = "", data_source: str = "", data_split: str = "",
                cgan_epochs: int = 0, vae_epochs: int = 0, classifier_epochs: int = 0, cipher_scheme: str = "",
                git_commit: str = "", data_repo_url: str = "", data_rev: str = "", dvc_remote: str = "",
                dvc_remote_url: str = ""):
        def in_image(task: dsl.PipelineTask) -> dsl.PipelineTask:
            """The image's reference in the task's environment: MLflow runs and versions record it."""
            return task.set_env_variable(IMAGE_ENV, image)

        def step(task: dsl.PipelineTask, kind: str) -> dsl.PipelineTask:
            return in_image(limited(task, kind))

        # The typed run parameters ("" and 0 keep params' value) go on top of params and the preset.
        # The presets as JSON text: a KFP struct constant cannot hold their nulls.
        sections = step(c.split_params(params=params, keys=task_params, presets=json.dumps(presets or {}),
                                       preset=preset, data_source=data_source, data_split=data_split,
                                       cgan_epochs=cgan_epochs, vae_epochs=vae_epochs,
                                       classifier_epochs=classifier_epochs, cipher_scheme=cipher_scheme),
                        "light").outputs

        def logged(stage: str) -> dict:
            """The inputs of a stage that logs to MLflow: its params and the code's commit (the run id comes
            from the pod's label: see `tracked`)."""
            return {"params": sections[stage], "git_commit": git_commit}

        ingest = c.ingest(params=sections["ingest"], data_repo_url=data_repo_url, data_rev=data_rev,
                          dvc_remote=dvc_remote, dvc_remote_url=dvc_remote_url)
        step(with_mlflow_secret(with_requests(ingest, DATA_REQUESTS)), "data")  # S3 credentials for DVC
        prepare = step(with_requests(c.prepare(params=sections["prepare"], raw=ingest.outputs["raw"]),
                                     DATA_REQUESTS), "data")
        prepared = prepare.outputs["prepared"]
        validate = step(with_requests(c.validate(params=sections["validate"], prepared=prepared), DATA_REQUESTS),
                        "data")

        if distributed:  # a TrainJob launcher for each training stage, staged in the run's workspace
            train = {stage: getattr(c, f"{stage}_trainjob") for stage in ("train_cgan", "train_vae", "train_classifier")}
            launch = {"image": image, "deadline_s": TIMEOUT_S["training"], "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                      "workspace": dsl.WORKSPACE_PATH_PLACEHOLDER}

            def training_task(task: dsl.PipelineTask) -> dsl.PipelineTask:
                return in_image(training(task, retry_backoff_s, gpus_per_node, "launcher"))
        else:
            train = {"train_cgan": c.train_cgan, "train_vae": c.train_vae, "train_classifier": c.train_classifier}
            launch = {}

            def training_task(task: dsl.PipelineTask) -> dsl.PipelineTask:
                return in_image(training(task, retry_backoff_s, checkpoints=checkpoints))

        def trained(stage: str, **artifacts: Any) -> dsl.PipelineTask:
            return train[stage](**logged(stage), prepared=prepared, **launch, **artifacts)

        cgan = training_task(trained("train_cgan").after(validate))
        vae = training_task(trained("train_vae").after(validate))
        models = {"cgan": cgan.outputs["cgan"], "vae": vae.outputs["vae"]}
        classifier = training_task(trained("train_classifier", **models))
        models["classifier"] = classifier.outputs["classifier"]

        evaluate = tracked(step(with_requests(c.evaluate(**logged("evaluate"), prepared=prepared, **models),
                                              SCORING_REQUESTS), "scoring"), cached=True)
        evaluation = evaluate.outputs["Output"]
        attack = tracked(step(with_requests(c.attack(**logged("attack"), evaluation=evaluation,
                                                     prepared=prepared, **models), SCORING_REQUESTS), "scoring"),
                         cached=True)
        gate = step(c.gate(params=sections["gate"], evaluation=evaluation, attacks=attack.outputs["Output"]),
                    "light")
        with dsl.If(gate.output == True, name="gates-pass"):  # noqa: E712 - a KFP condition, not a Python test
            tracked(step(c.promote(**logged("promote"), evaluation=evaluation, attacks=attack.outputs["Output"],
                                   prepared=prepared, **models), "light"), cached=False)

    return crypson
