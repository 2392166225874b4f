"""The multi-GPU path: a spec compiled for 2 nodes x 4 GPUs, its TrainJob launchers, and the TrainJobs they create.

The spec is parsed strictly through KFP's protobuf messages (as in test_kfp_spec.py). What KFP's driver would
pass to a launcher as its dsl.TaskConfig is rebuilt from the launcher task's resources and Kubernetes config
(kubeflow/pipelines 2.17 backend/src/v2/driver: driver.go initPodSpecPatch, k8s.go extendPodSpecPatch), turned
into a TrainJob by crypson.kfp.trainjob.manifest, and validated strictly against the vendored Trainer v2.3.0
CRDs (infra/kubeflow/trainer/crds/) and the GPU pool's placement rules of test_infra.py. jsonschema is
required: without it these tests fail, they do not skip.
"""

import copy
import re

import pytest
import yaml
from google.protobuf import json_format

from crypson.kfp import trainjob
from crypson.kfp.project import compile_spec
from tests.unit.infra_helpers import KUBEFLOW, crd_validator, schema_errors
from tests.unit.test_infra import gpu_violations, terraform_gpu_pool
from tests.unit.test_kfp_spec import GPU_POOL, PIPELINE, REPO, TRAINING, all_tasks, executor_of, gpu_placement, parse

NODES, GPUS = 2, 4
LAUNCHERS = tuple(f"{task}-trainjob" for task in TRAINING)
RUN_ID = "5d4c3b2a-1f0e-4d9c-8b7a-695847362514"
RUN_NAME = "crypson-x7k2p"  # the Argo workflow's name: KFP names the workspace PVC after it
EXAMPLE = KUBEFLOW / "trainer" / "trainjob-example.yaml"


@pytest.fixture(scope="module")
def distributed_spec(tmp_path_factory) -> str:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["distributed"].update(nodes=NODES, gpus_per_node=GPUS)
    params = tmp_path_factory.mktemp("params") / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    return compile_spec(REPO, params, PIPELINE.DEFAULT_IMAGE)


@pytest.fixture(scope="module")
def parsed(distributed_spec):
    return parse(distributed_spec)


@pytest.fixture(scope="module")
def trainjobs():
    return crd_validator("trainjobs")


def task_config_of(parsed, task: str) -> dict:
    """The dsl.TaskConfig fields KFP's driver gives the launcher `task` (pod spec JSON, as the executor reads it)."""
    spec, deployment, kubernetes = parsed
    label = executor_of(spec, task)
    container, config = deployment.executors[label].container, kubernetes[label]
    resources = container.resources
    env = [{"name": entry.name, "value": entry.value} for entry in container.env]
    env += [{"name": key.env_var, "valueFrom": {"secretKeyRef": {"name": secret.secret_name, "key": key.secret_key}}}
            for secret in config.secret_as_env for key in secret.key_to_env]
    return {
        "resources": {"requests": {"cpu": resources.resource_cpu_request, "memory": resources.resource_memory_request},
                      "limits": {"cpu": resources.resource_cpu_limit, "memory": resources.resource_memory_limit,
                                 resources.accelerator.resource_type: resources.accelerator.resource_count}},
        "env": env,
        "node_selector": dict(config.node_selector.labels),
        "tolerations": [json_format.MessageToDict(toleration) for toleration in config.tolerations],
        "volumes": [{"name": "kfp-workspace", "persistentVolumeClaim": {"claimName": f"{RUN_NAME}-kfp-workspace"}}],
        "volume_mounts": [{"name": "kfp-workspace", "mountPath": "/kfp-workspace"}],
    }


def launched(parsed, task: str, **changes) -> dict:
    """The TrainJob the launcher `task` creates for RUN_ID (as crypson.kfp.launcher.run_stage builds it)."""
    stage = task.removesuffix("-trainjob").replace("-", "_")
    arguments = dict(stage=stage, run_id=RUN_ID, image=PIPELINE.DEFAULT_IMAGE, nodes=NODES, gpus_per_node=GPUS,
                     root=f"/kfp-workspace/trainjobs/{stage}", namespace="kubeflow",
                     placement=trainjob.Placement.from_task_config(task_config_of(parsed, task)),
                     deadline_s=PIPELINE.TIMEOUT_S["training"],
                     run_env={"KFP_RUN_ID": RUN_ID, "CRYPSON_EXECUTION_ID": RUN_ID, "CRYPSON_GIT_COMMIT": "0" * 40})
    return trainjob.manifest(**{**arguments, **changes})


# ---- the compiled spec ------------------------------------------------------------------------------------
def test_training_stages_become_trainjob_launchers(parsed):
    spec, _, _ = parsed
    tasks = all_tasks(spec)
    assert set(LAUNCHERS) <= set(tasks) and not set(TRAINING) & set(tasks)
    # Wired as the single-GPU tasks are: the classifier trains on the two launchers' models.
    classifier = tasks["train-classifier-trainjob"].inputs.artifacts
    assert {name: value.task_output_artifact.producer_task for name, value in classifier.items()
            if name != "prepared"} == {"cgan": "train-cgan-trainjob", "vae": "train-vae-trainjob"}
    assert tasks["evaluate"].inputs.artifacts["classifier"].task_output_artifact.producer_task == \
        "train-classifier-trainjob"
    for task in LAUNCHERS:
        inputs = tasks[task].inputs.parameters
        assert inputs["image"].runtime_value.constant.string_value == PIPELINE.DEFAULT_IMAGE, task
        assert inputs["deadline_s"].runtime_value.constant.number_value == PIPELINE.TIMEOUT_S["training"], task
        assert inputs["workspace"].runtime_value.constant.string_value == "{{$.workspace_path}}", task


def test_launchers_pass_placement_env_and_volumes_through_to_the_trainjob(parsed):
    spec, _, _ = parsed
    passthrough = {"RESOURCES": False, "KUBERNETES_NODE_SELECTOR": False, "KUBERNETES_TOLERATIONS": False,
                   "KUBERNETES_AFFINITY": False, "ENV": True, "KUBERNETES_VOLUMES": True}  # field -> apply to task
    for task in LAUNCHERS:
        component = spec.components[all_tasks(spec)[task].component_ref.name]
        declared = {json_format.MessageToDict(p)["field"]: p.apply_to_task for p in component.task_config_passthroughs}
        assert declared == passthrough, task
        assert "task_config" in component.input_definitions.parameters, task
    other = {name for name, component in spec.components.items() if component.task_config_passthroughs}
    assert other == {f"comp-{task}" for task in LAUNCHERS}


def test_launchers_ask_for_each_nodes_gpus_on_the_gpu_pool(parsed):
    spec, deployment, kubernetes = parsed
    for task in LAUNCHERS:  # each node's: 4 GPUs and 4 times a training task's CPU and memory
        assert gpu_placement(parsed, task) == {"accelerator": ("nvidia.com/gpu", "4"), "requests": ("16", "64Gi"),
                                               "limits": ("32", "128Gi"), **GPU_POOL}, task
        label = executor_of(spec, task)
        (secret,) = kubernetes[label].secret_as_env
        assert secret.secret_name == PIPELINE.MLFLOW_SECRET, task
        assert not {env.name for env in deployment.executors[label].container.env} & set(PIPELINE.MLFLOW_SECRET_KEYS)


def test_launchers_retry_and_outlive_their_trainjobs_deadline(parsed):
    spec, _, kubernetes = parsed
    tasks = all_tasks(spec)
    limit = PIPELINE.TIMEOUT_S["launcher"]
    assert limit > PIPELINE.TIMEOUT_S["training"]  # the launcher reports the TrainJob's DeadlineExceeded
    for task in LAUNCHERS:
        policy = tasks[task].retry_policy
        assert (policy.max_retry_count, policy.backoff_duration.seconds, policy.backoff_factor) == (2, 120, 2.0)
        assert policy.backoff_max_duration.seconds == 3 * limit + 120 + 240, task
        assert kubernetes[executor_of(spec, task)].active_deadline_seconds == limit, task
        assert not tasks[task].caching_options.enable_cache, task  # staged in the run's workspace PVC: a new key each run


def test_the_default_spec_keeps_training_in_its_tasks_and_launchers_return_the_same_artifacts(parsed):
    default, _, _ = parse((REPO / "pipelines" / "crypson_pipeline.yaml").read_text())
    assert set(TRAINING) <= set(all_tasks(default)) and not set(LAUNCHERS) & set(all_tasks(default))
    assert not any(component.task_config_passthroughs for component in default.components.values())
    spec, _, _ = parsed
    for task in TRAINING:  # what the rest of the pipeline sees of a training task: the same outputs and inputs
        single = default.components[all_tasks(default)[task].component_ref.name]
        launcher = spec.components[all_tasks(spec)[f"{task}-trainjob"].component_ref.name]
        assert launcher.output_definitions == single.output_definitions, task
        assert set(launcher.input_definitions.artifacts) == set(single.input_definitions.artifacts), task
        # + the run's id and workspace: the launcher stages its TrainJob there (so it is not cached across runs)
        assert set(launcher.input_definitions.parameters) == set(single.input_definitions.parameters) | {
            "image", "deadline_s", "task_config", "run_id", "workspace"}, task


def test_no_credential_in_the_distributed_spec(distributed_spec):
    assert not re.search(r"AKIA[0-9A-Z]{16}", distributed_spec)
    assert not re.search(r"://[^/\s:@'\"]+:[^/\s@'\"]+@", distributed_spec)


# ---- the TrainJob ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", LAUNCHERS)
def test_each_launchers_trainjob_passes_the_crd_schema_and_the_gpu_pools_rules(parsed, trainjobs, task):
    job = launched(parsed, task)
    assert schema_errors(trainjobs, job) == []
    (patch,) = job["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = copy.deepcopy(replicated["template"]["spec"]["template"]["spec"])
    pod["containers"][0].update(image=job["spec"]["trainer"]["image"], resources=job["spec"]["trainer"]["resourcesPerNode"])
    assert gpu_violations({"kind": "Pod", "metadata": job["metadata"], "spec": pod}, terraform_gpu_pool()) == []


def test_trainjob_runs_the_stage_under_torchrun_on_every_gpu(parsed):
    job = launched(parsed, "train-vae-trainjob")
    trainer = job["spec"]["trainer"]
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                         "name": "torch-distributed"}
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert trainer["command"] == ["torchrun", "-m", "crypson", "stage", "train-vae", "--params",
                                  "/kfp-workspace/trainjobs/train_vae/params.json", "--root",
                                  "/kfp-workspace/trainjobs/train_vae", "--quiet"]
    assert job["spec"]["activeDeadlineSeconds"] == PIPELINE.TIMEOUT_S["training"]
    env = {entry["name"]: entry for entry in trainer["env"]}
    for key in PIPELINE.MLFLOW_SECRET_KEYS:  # by reference, never a value
        assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": "crypson-mlflow", "key": key}}}
    assert env["KFP_RUN_ID"]["value"] == env["CRYPSON_EXECUTION_ID"]["value"] == RUN_ID
    assert env[PIPELINE.IMAGE_ENV]["value"] == PIPELINE.DEFAULT_IMAGE
    assert not set(env) & set(trainjob.RESERVED_ENV)
    name = job["metadata"]["name"]
    assert name == trainjob.trainjob_name("train_vae", RUN_ID) and len(name) <= 40  # pods: <name>-node-0-0
    assert trainjob.trainjob_name("train_vae", "another-run") != name


@pytest.mark.parametrize("nodes, gpus, affinity", [(1, 4, None), (4, 4, None), (2, 4, {"nodeAffinity": {
    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "cloud.google.com/gke-accelerator", "operator": "In", "values": ["nvidia-l4"]}]}]}}})])
def test_other_topologies_and_an_affinity_pass_the_schema(parsed, trainjobs, nodes, gpus, affinity):
    placement = trainjob.Placement.from_task_config({**task_config_of(parsed, "train-cgan-trainjob"),
                                                     "affinity": affinity})
    job = launched(parsed, "train-cgan-trainjob", nodes=nodes, placement=placement)
    assert schema_errors(trainjobs, job) == []
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert ("affinity" in pod["template"]["spec"]["template"]["spec"]) == (affinity is not None)


def test_the_strict_schema_refuses_unknown_fields_and_wrong_types(parsed, trainjobs):
    job = launched(parsed, "train-cgan-trainjob")
    misspelled = copy.deepcopy(job)
    misspelled["spec"]["trainer"]["numNode"] = misspelled["spec"]["trainer"].pop("numNodes")
    assert any("numNode" in error for error in schema_errors(trainjobs, misspelled))
    old_api = copy.deepcopy(job)  # Trainer v2.1's field, gone in v2.3
    old_api["spec"]["podSpecOverrides"] = []
    assert any("podSpecOverrides" in error for error in schema_errors(trainjobs, old_api))
    wrong = copy.deepcopy(job)
    wrong["spec"]["trainer"]["numNodes"] = "two"
    assert schema_errors(trainjobs, wrong) != []


@pytest.mark.parametrize("change, message", [
    ({"gpus_per_node": 2}, "the pipeline task asks for 4 GPUs per node, but the run's params say "
                           "distributed.gpus_per_node = 2"),
    ({"root": "/tmp/train_vae"}, "/tmp/train_vae is on none of the volumes"),
    ({"run_id": "not a label value"}, "is not a Kubernetes label value"),
    ({"run_env": {"PET_NNODES": "2"}}, "PET_NNODES is the torch runtime's"),
    ({"run_env": {"AWS_SECRET_ACCESS_KEY": "hunter2"}}, "AWS_SECRET_ACCESS_KEY carries a literal value"),
    ({"nodes": 0}, "nodes=0, gpus_per_node=4"),
])
def test_manifest_refuses_what_would_not_run_or_would_leak(parsed, change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        launched(parsed, "train-vae-trainjob", **change)


def test_a_task_without_a_gpu_limit_is_refused():
    with pytest.raises(ValueError, match="passes no nvidia.com/gpu limit through"):
        trainjob.manifest(stage="train_vae", run_id=RUN_ID, image="i:1", root="/w/x", nodes=1, gpus_per_node=2,
                          placement=trainjob.Placement(volume_mounts=({"name": "w", "mountPath": "/w"},)),
                          namespace="kubeflow", deadline_s=60)


# ---- the committed manifests -------------------------------------------------------------------------------
def test_example_trainjob_is_what_the_pipeline_launches_and_passes_the_schema(parsed, trainjobs):
    example = yaml.safe_load(EXAMPLE.read_text())
    assert example == launched(parsed, "train-cgan-trainjob"), \
        f"{EXAMPLE.name} is out of date: write launched(parsed, 'train-cgan-trainjob') there"
    assert schema_errors(trainjobs, example) == []


def test_torch_runtime_passes_the_crd_schema_and_has_what_the_trainjobs_patch():
    runtime = yaml.safe_load((KUBEFLOW / "trainer" / "torch-distributed.yaml").read_text())
    assert schema_errors(crd_validator("clustertrainingruntimes"), runtime) == []
    assert runtime["metadata"]["name"] == "torch-distributed"  # distributed.runtime's only value
    assert "torch" in runtime["spec"]["mlPolicy"]
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == trainjob.NODE
    assert [c["name"] for c in job["template"]["spec"]["template"]["spec"]["containers"]] == [trainjob.NODE]


def test_rbac_lets_the_pipeline_runner_manage_trainjobs():
    role, binding = yaml.safe_load_all((KUBEFLOW / "trainer" / "rbac.yaml").read_text())
    (rule,) = role["rules"]
    assert (rule["apiGroups"], rule["resources"]) == ([trainjob.GROUP], [trainjob.PLURAL])
    assert {"create", "get", "delete"} <= set(rule["verbs"])  # what crypson.kfp.launcher calls
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}]


def test_vendored_crds_are_trainer_2_3_0():
    for plural in ("trainjobs", "clustertrainingruntimes"):
        first = (KUBEFLOW / "trainer" / "crds" / f"{plural}.yaml").read_text().splitlines()[0]
        assert first.startswith(f"# Kubeflow Trainer v{trainjob.TRAINER_VERSION} (658725b"), plural
