"""The committed Kubeflow spec: in sync with the code, valid protobuf to the last field, and placed.

Parsed strictly through the protobuf messages KFP's backend uses (ignore_unknown_fields=False),
so a misspelled field in the deployment config or in a Kubernetes executor config fails here
rather than on the cluster. The same messages give each task's retry policy, time limit, params
and what its cache key is made of.
"""

import copy
import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from google.protobuf import json_format  # noqa: E402
from kfp.kubernetes import kubernetes_executor_config_pb2  # noqa: E402
from kfp.pipeline_spec import pipeline_spec_pb2  # noqa: E402

from crypson.config import parse_config  # noqa: E402
from crypson.kfp import runtime  # noqa: E402
from crypson.kfp.project import SPEC_PATH, compile_spec, load_pipeline_module, task_params  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PIPELINE = load_pipeline_module(REPO)
from components import stages  # noqa: E402 - importable once load_pipeline_module put the repository on sys.path

TRAINING = ("train-cgan", "train-vae", "train-classifier")
TRACKED = (*TRAINING, "evaluate", "attack", "promote")  # log to MLflow
DATA = ("ingest", "prepare", "validate")
SPLIT = "split-params"
DVC_STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def strict(document: dict, message):
    return json_format.ParseDict(document, message, ignore_unknown_fields=False)


def parse(text: str) -> tuple[pipeline_spec_pb2.PipelineSpec, pipeline_spec_pb2.PipelineDeploymentConfig,
                              dict[str, kubernetes_executor_config_pb2.KubernetesExecutorConfig]]:
    """(pipeline spec, deployment config, Kubernetes config by executor label), all strictly parsed."""
    pipeline_document, platform_document = yaml.safe_load_all(text)
    spec = strict(pipeline_document, pipeline_spec_pb2.PipelineSpec())
    deployment = strict(pipeline_document["deploymentSpec"], pipeline_spec_pb2.PipelineDeploymentConfig())
    strict(platform_document, pipeline_spec_pb2.PlatformSpec())
    executors = platform_document["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    kubernetes = {label: strict(config, kubernetes_executor_config_pb2.KubernetesExecutorConfig())
                  for label, config in executors.items()}
    return spec, deployment, kubernetes


@pytest.fixture(scope="module")
def committed() -> str:
    return (REPO / SPEC_PATH).read_text()


@pytest.fixture(scope="module")
def parsed(committed):
    return parse(committed)


def all_tasks(spec: pipeline_spec_pb2.PipelineSpec) -> dict[str, pipeline_spec_pb2.PipelineTaskSpec]:
    """Every task of the root DAG and of the sub-DAGs (the dsl.If branch), by name."""
    found = dict(spec.root.dag.tasks)
    for component in spec.components.values():
        if component.HasField("dag"):
            found.update(component.dag.tasks)
    return found


def executor_of(spec: pipeline_spec_pb2.PipelineSpec, task: str) -> str:
    return spec.components[all_tasks(spec)[task].component_ref.name].executor_label


def as_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def leaves(mapping: dict, prefix: str = "") -> dict:
    """A nested params mapping as dotted key -> value."""
    flat = {}
    for key, value in mapping.items():
        flat |= leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return flat


def split_outputs(inputs: dict) -> dict[str, str]:
    """What the split_params task outputs for its resolved inputs: its component's own function, by output name.
    (A protobuf Value holds every number as a float: the integer inputs are turned back into ints.)"""
    annotations = stages.split_params.__annotations__
    arguments = {name: int(value) if annotations[name] is int else value for name, value in inputs.items()}
    return dict(zip(annotations["return"]._fields, stages.split_params(**arguments)))


WORKSPACE_PATH = "{{$.workspace_path}}"
RUN_ID = "{{$.pipeline_job_uuid}}"


def cache_key_material(text: str, arguments: dict | None = None, run: str = "run-1") -> dict[str, dict]:
    """Per container task, what KFP's cache key is made of, resolved from the compiled spec.

    KFP's driver hashes a task's input parameter values as resolved for the run, its input artifacts'
    names, its outputs' names and types, its container: image, command and arguments, which hold the
    component's source, and the names of the PVCs it mounts, the run's workspace PVC (named after the run)
    included (kubeflow/pipelines backend/src/v2/cacheutils/cache.go, GenerateCacheKey; driver/container.go).
    Here parameter values resolve as the driver resolves them: constants (the run-id placeholder becomes
    `run`, as the run's workspace PVC does: what changes from run to run), the pipeline's defaults or
    `arguments`, and the split_params task's outputs, computed by its component's function. Any other task output, and every
    input artifact, stands for its producer's own key: an artifact is the same one only when its producer
    was a cache hit, so a changed producer changes every consumer.
    """
    spec, deployment, kubernetes = parse(text)
    defaults = {name: json_format.MessageToDict(definition.default_value)
                for name, definition in spec.root.input_definitions.parameters.items()}
    defaults.update(arguments or {})  # a run's arguments, as a submission passes them
    split: dict[str, str] = {}
    materials: dict[str, dict] = {}

    def resolve_dag(dag: pipeline_spec_pb2.DagSpec, dag_inputs: dict) -> None:
        done: set[str] = set()
        while len(done) < len(dag.tasks):
            before = len(done)
            for name, task in dag.tasks.items():
                if name in done or not set(task.dependent_tasks) <= done:
                    continue
                inputs = {}
                for parameter, spec_value in task.inputs.parameters.items():
                    kind = spec_value.WhichOneof("kind")
                    if kind == "runtime_value":
                        value = json_format.MessageToDict(spec_value.runtime_value.constant)
                        inputs[parameter] = value.replace(RUN_ID, run) if isinstance(value, str) else value
                    elif kind == "component_input_parameter":
                        inputs[parameter] = dag_inputs[spec_value.component_input_parameter]
                    else:
                        output = spec_value.task_output_parameter
                        inputs[parameter] = (split[output.output_parameter_key] if output.producer_task == SPLIT
                                             else {"output": output.output_parameter_key,
                                                   "of": digest(materials[output.producer_task])})
                for artifact, spec_value in task.inputs.artifacts.items():
                    if spec_value.WhichOneof("kind") == "component_input_artifact":
                        inputs[artifact] = dag_inputs[spec_value.component_input_artifact]
                    else:
                        output = spec_value.task_output_artifact
                        inputs[artifact] = {"artifact": output.output_artifact_key,
                                            "of": digest(materials[output.producer_task])}
                if name == SPLIT:  # the first task: the others read its outputs
                    split.update(split_outputs(inputs))
                component = spec.components[task.component_ref.name]
                if component.HasField("dag"):  # the dsl.If branch: its tasks see these as their inputs
                    resolve_dag(component.dag, inputs)
                else:
                    container = deployment.executors[component.executor_label].container
                    config = kubernetes.get(component.executor_label)
                    pvcs = sorted(mount.constant for mount in config.pvc_mount) if config else []
                    if WORKSPACE_PATH in inputs.values():
                        pvcs.append(f"kfp-workspace-{run}")  # GetWorkspacePVCName(run name)
                    materials[name] = {"inputs": inputs, "outputs": as_dict(component.output_definitions),
                                       "image": container.image, "command": list(container.command),
                                       "args": list(container.args), "pvcs": pvcs}
                done.add(name)
            assert len(done) > before, f"tasks that wait on each other: {sorted(set(dag.tasks) - done)}"

    resolve_dag(spec.root.dag, defaults)
    return materials


def digest(material: dict) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def cache_keys(text: str) -> dict[str, str]:
    return {task: digest(material) for task, material in cache_key_material(text).items()}


def test_committed_spec_is_what_the_code_compiles(committed):
    fresh = compile_spec(REPO, REPO / "params.yaml", PIPELINE.DEFAULT_IMAGE)
    assert fresh == committed, "pipelines/crypson_pipeline.yaml is out of date: run `crypson pipeline compile`"


def test_strict_parse_rejects_a_misspelled_field(committed):
    pipeline_document, platform_document = yaml.safe_load_all(committed)
    deployment = copy.deepcopy(pipeline_document["deploymentSpec"])
    container = deployment["executors"]["exec-train-vae"]["container"]
    container["resources"]["acelerator"] = container["resources"].pop("accelerator")
    with pytest.raises(json_format.ParseError, match="acelerator"):
        strict(deployment, pipeline_spec_pb2.PipelineDeploymentConfig())
    executors = platform_document["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    config = copy.deepcopy(executors["exec-train-vae"])
    config["toleration"] = config.pop("tolerations")
    with pytest.raises(json_format.ParseError, match="toleration"):
        strict(config, kubernetes_executor_config_pb2.KubernetesExecutorConfig())


def test_every_task_runs_the_project_image(parsed):
    spec, deployment, _ = parsed
    labels = {executor_of(spec, task) for task in all_tasks(spec) if not task.startswith("condition")}
    assert labels == set(deployment.executors)
    assert {deployment.executors[label].container.image for label in labels} == {PIPELINE.DEFAULT_IMAGE}


def gpu_placement(parsed, task: str) -> dict:
    """A task's accelerator, CPU and memory (requests, limits), node selector and tolerations, from the spec."""
    spec, deployment, kubernetes = parsed
    label = executor_of(spec, task)
    resources, config = deployment.executors[label].container.resources, kubernetes[label]
    return {"accelerator": (resources.accelerator.resource_type, resources.accelerator.resource_count),
            "requests": (resources.resource_cpu_request, resources.resource_memory_request),
            "limits": (resources.resource_cpu_limit, resources.resource_memory_limit),
            "node_selector": dict(config.node_selector.labels),
            "tolerations": [(t.key, t.operator, t.value, t.effect) for t in config.tolerations]}


# The GPU pool that infra/terraform creates, as every GPU task selects and tolerates it.
GPU_POOL = {"node_selector": dict([PIPELINE.GPU_NODE_LABEL]),
            "tolerations": [("nvidia.com/gpu", "Equal", "present", "NoSchedule")]}


def test_training_tasks_run_on_one_gpu_of_the_gpu_pool(parsed):
    spec, deployment, kubernetes = parsed
    for task in TRAINING:
        assert gpu_placement(parsed, task) == {"accelerator": ("nvidia.com/gpu", "1"), "requests": ("4", "16Gi"),
                                               "limits": ("8", "32Gi"), **GPU_POOL}, task
    for task in set(all_tasks(spec)) - set(TRAINING) - {"condition-1"}:
        label = executor_of(spec, task)
        assert not deployment.executors[label].container.resources.accelerator.resource_type, task
        assert not kubernetes.get(label, kubernetes_executor_config_pb2.KubernetesExecutorConfig()).tolerations, task


def test_mlflow_and_s3_settings_come_from_the_secret_only(parsed):
    spec, deployment, kubernetes = parsed
    secret_keys = set(PIPELINE.MLFLOW_SECRET_KEYS)
    assert secret_keys == {"MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                           "AWS_SECRET_ACCESS_KEY"}
    for task in (*TRACKED, "ingest"):  # ingest: S3 credentials for the DVC remote
        (secret,) = kubernetes[executor_of(spec, task)].secret_as_env
        assert secret.secret_name == "crypson-mlflow", task
        assert {(k.secret_key, k.env_var) for k in secret.key_to_env} == {(k, k) for k in secret_keys}, task
    for label, executor in deployment.executors.items():
        assert not {env.name for env in executor.container.env} & secret_keys, label


def test_no_credential_in_the_spec(committed, monkeypatch):
    assert not re.search(r"AKIA[0-9A-Z]{16}", committed)  # an AWS access key id
    assert not re.search(r"://[^/\s:@'\"]+:[^/\s@'\"]+@", committed)  # user:password@ in a URL
    assert not re.search(r"minioadmin|minio123", committed, re.IGNORECASE)  # MinIO's well-known defaults
    # Compiling never reads credentials from the environment into the spec.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-secret-4f2a")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://canary-user:canary-pass@mlflow:5000")
    compiled = compile_spec(REPO, REPO / "params.yaml", PIPELINE.DEFAULT_IMAGE)
    assert "canary" not in compiled


def test_caching_on_for_every_step_but_promotion(parsed):
    spec, _, _ = parsed
    tasks = all_tasks(spec)
    cached = {task for task in tasks if not task.startswith("condition") and tasks[task].caching_options.enable_cache}
    assert cached == {SPLIT, *DATA, *TRAINING, "evaluate", "attack", "gate"}  # promote moves aliases: every run


def test_a_second_run_of_the_same_params_has_every_cache_key_of_the_first(committed):
    """Nothing in a task's key changes from run to run: no run id input, no run-scoped PVC. So a second run
    of unchanged params and code is all cache hits (promotion aside), as a second `dvc repro` does nothing."""
    first, second = (cache_key_material(committed, run=run) for run in ("run-1", "run-2"))
    assert first == second
    assert all(RUN_ID not in json.dumps(material) and WORKSPACE_PATH not in json.dumps(material)
               for material in first.values())
    for task in TRAINING:  # the checkpoints' PVC, a fixed name
        assert first[task]["pvcs"] == [PIPELINE.CHECKPOINT_PVC], task


def test_wiring_parallel_training_and_gated_promotion(parsed):
    spec, _, _ = parsed
    tasks = all_tasks(spec)
    assert set(tasks["train-cgan"].dependent_tasks) == set(tasks["train-vae"].dependent_tasks) == {
        SPLIT, "prepare", "validate"}
    assert {"train-cgan", "train-vae"} <= set(tasks["train-classifier"].dependent_tasks)
    assert "promote" not in spec.root.dag.tasks  # only inside the dsl.If branch
    condition = tasks["condition-1"].trigger_policy.condition
    assert condition == "inputs.parameter_values['pipelinechannel--gate-Output'] == true"
    # The MLflow steps get the KFP run id from their pod's label (not as an input, which would be part of their
    # cache key), so MLflow runs carry the `kfp_run_id` tag.
    kubernetes = parsed[2]
    for task in TRACKED:
        assert "run_id" not in tasks[task].inputs.parameters, task
        (field,) = kubernetes[executor_of(spec, task)].field_path_as_env
        assert (field.name, field.field_path) == (runtime.RUN_ID_ENV, "metadata.labels['pipeline/runid']"), task


def test_params_default_is_params_yaml(parsed):
    spec, _, _ = parsed
    default = spec.root.input_definitions.parameters["params"].default_value.string_value
    assert "\n" not in default  # kfp copies it into the spec's header comment
    assert json.loads(default) == yaml.safe_load((REPO / "params.yaml").read_text())


def test_each_task_receives_only_the_params_its_dvc_stage_lists(parsed):
    spec, _, _ = parsed
    tasks = all_tasks(spec)
    keys = json_format.MessageToDict(tasks[SPLIT].inputs.parameters["keys"].runtime_value.constant)
    assert keys == task_params(REPO / "dvc.yaml")
    for stage, listed in keys.items():  # dvc.yaml's list, + where MLflow logs for the tasks that log there
        own = DVC_STAGES["promote" if stage == "gate" else stage]["params"]
        logs = stage.replace("_", "-") in TRACKED
        assert listed == own + ["tracking"] * logs, stage
    # Only the split task reads the pipeline's `params`; each stage reads the split's output named after it.
    readers = {name for name, task in tasks.items()
               if "params" in {value.component_input_parameter for value in task.inputs.parameters.values()}}
    assert readers == {SPLIT}
    materials = cache_key_material((REPO / SPEC_PATH).read_text())
    full, defaults = (leaves(parse_config(raw).model_dump(by_alias=True, mode="json"))
                      for raw in (yaml.safe_load((REPO / "params.yaml").read_text()), {}))
    for stage, listed in keys.items():
        own = leaves(json.loads(materials[stage.replace("_", "-")]["inputs"]["params"]))
        assert all(any(key == item or key.startswith(f"{item}.") for item in listed) for key in own), stage
        assert all(any(key == item or key.startswith(f"{item}.") for key in own) for item in listed), stage
        assert own == {key: full[key] for key in own}, stage  # the run's values of its own keys
        # The task's Config: its own keys, and the code's defaults (equal to params.yaml's) for the rest.
        rebuilt = runtime.load_params(materials[stage.replace("_", "-")]["inputs"]["params"])
        assert leaves(rebuilt.model_dump(by_alias=True, mode="json")) == defaults | own, stage


@pytest.mark.parametrize("key, unchanged", [
    ("vae.lr", {"ingest", "prepare", "validate", "train-cgan"}),
    ("cgan.lr", {"ingest", "prepare", "validate", "train-vae"}),
    ("prepare.val_fraction", {"ingest"}),
    ("tracking.experiment", {"ingest", "prepare", "validate"}),  # where runs are logged: never a data task's key
    ("promote.min_psnr_db", {"ingest", "prepare", "validate", *TRAINING, "evaluate", "attack"}),
])
def test_a_params_change_moves_only_the_cache_keys_of_the_tasks_that_read_it(committed, tmp_path, key, unchanged):
    """As under DVC: the tasks whose params and inputs are the same keep their cache keys, and KFP reuses their
    outputs (the cGAN after a change to `vae.lr`); the changed task and everything downstream run again."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    section, name = key.split(".")
    raw[section][name] = raw[section][name] * 2 if isinstance(raw[section][name], float) else f"{raw[section][name]}-b"
    changed_params = tmp_path / "params.yaml"
    changed_params.write_text(yaml.safe_dump(raw))
    changed = compile_spec(REPO, changed_params, PIPELINE.DEFAULT_IMAGE)
    # The two specs differ only in the default of `params`: the wiring and the components are the same.
    before_document, after_document = (next(yaml.safe_load_all(text)) for text in (committed, changed))
    assert before_document["root"]["inputDefinitions"]["parameters"].pop("params") != \
        after_document["root"]["inputDefinitions"]["parameters"].pop("params")
    assert before_document == after_document
    before, after = cache_keys(committed), cache_keys(changed)
    assert set(before) == set(after) == {SPLIT, *DATA, *TRACKED, "gate"}
    assert {task for task in before if before[task] == after[task]} == unchanged


def test_typed_run_parameters_are_the_ui_knobs_laid_over_params(parsed, committed):
    spec, _, _ = parsed
    definitions = spec.root.input_definitions.parameters
    integer, string = (pipeline_spec_pb2.ParameterType.ParameterTypeEnum.Value(name)
                       for name in ("NUMBER_INTEGER", "STRING"))
    for name in ("cgan_epochs", "vae_epochs", "classifier_epochs"):
        assert definitions[name].parameter_type == integer and definitions[name].default_value.number_value == 0
    for name in ("preset", "data_source", "data_split", "cipher_scheme"):
        assert definitions[name].parameter_type == string and definitions[name].default_value.string_value == ""
    presets = json.loads(all_tasks(spec)[SPLIT].inputs.parameters["presets"].runtime_value.constant.string_value)
    assert presets == {path.stem: yaml.safe_load(path.read_text()) for path in (REPO / "presets").glob("*.yaml")}

    tiny = yaml.safe_load((REPO / "presets" / "tiny.yaml").read_text())
    materials = cache_key_material(committed, {"preset": "tiny", "vae_epochs": 7, "cipher_scheme": "report"})
    vae = json.loads(materials["train-vae"]["inputs"]["params"])["vae"]
    assert vae["epochs"] == 7 and vae["channels"] == tiny["vae"]["channels"]  # the preset, then the typed knob
    assert json.loads(materials["attack"]["inputs"]["params"])["cipher"]["scheme"] == "report"
    assert json.loads(materials["train-cgan"]["inputs"]["params"])["cgan"]["epochs"] == tiny["cgan"]["epochs"]
    # As with params: a typed knob moves only the keys of the tasks that read its setting.
    before, after = cache_keys(committed), {task: digest(material) for task, material in cache_key_material(
        committed, {"vae_epochs": 7}).items()}
    assert {task for task in before if before[task] == after[task]} == {"ingest", "prepare", "validate",
                                                                        "train-cgan"}


@pytest.mark.parametrize("arguments, message", [
    ({"preset": "huge"}, "preset 'huge' is not one of the presets in the spec: quality, report, tiny"),
    ({"vae_epochs": -1}, "run parameter vae_epochs = -1"),
    ({"data_source": "mnist"}, "mnist"),
])
def test_a_bad_run_parameter_fails_the_split_task_by_name(committed, arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cache_key_material(committed, arguments)


def test_cache_key_material_sees_an_upstream_change_through_artifacts(committed):
    materials = cache_key_material(committed)
    vae = materials["train-classifier"]["inputs"]["vae"]
    assert vae == {"artifact": "vae", "of": digest(materials["train-vae"])}
    assert materials["promote"]["inputs"]["vae"] == vae  # through the dsl.If branch's inputs
    assert materials["ingest"]["inputs"]["data_repo_url"] == ""  # a pipeline argument's default
    assert set(materials["train-vae"]["inputs"]) == {"params", "git_commit", "prepared"}


def test_training_tasks_retry_with_exponential_backoff(parsed):
    spec, _, _ = parsed
    tasks = all_tasks(spec)
    for task in TRAINING:
        policy = tasks[task].retry_policy
        assert policy.max_retry_count == PIPELINE.TRAINING_RETRIES == 2, task
        assert policy.backoff_duration.seconds == 120 and policy.backoff_factor == 2.0, task
        # Argo retries only within backoff_max_duration of the first attempt's start: room for every attempt.
        attempts = (policy.max_retry_count + 1) * PIPELINE.TIMEOUT_S["training"]
        waits = sum(120 * 2.0 ** retry for retry in range(policy.max_retry_count))
        assert policy.backoff_max_duration.seconds == attempts + waits, task
    for task in set(tasks) - set(TRAINING):
        assert not tasks[task].HasField("retry_policy"), task


def test_training_tasks_keep_their_checkpoints_on_the_fixed_pvc(committed, parsed):
    spec, deployment, kubernetes = parsed
    _, platform = yaml.safe_load_all(committed)
    assert "pipelineConfig" not in platform["platforms"]["kubernetes"]  # one GPU: no run workspace to create
    tasks = all_tasks(spec)
    for task in tasks:
        if task.startswith("condition"):
            continue
        label = executor_of(spec, task)
        assert "workspace" not in tasks[task].inputs.parameters, task
        mounts = [(m.constant, m.mount_path) for m in kubernetes[label].pvc_mount] if label in kubernetes else []
        env = {e.name: e.value for e in deployment.executors[label].container.env}
        if task in TRAINING:  # a retried attempt finds its checkpoint there (crypson.kfp.runtime.task_checkpoints)
            assert mounts == [(PIPELINE.CHECKPOINT_PVC, PIPELINE.CHECKPOINT_MOUNT)], task
            assert env[runtime.CHECKPOINTS_ENV] == PIPELINE.CHECKPOINT_MOUNT, task
        else:
            assert not mounts and runtime.CHECKPOINTS_ENV not in env, task  # only training keeps state


def test_every_task_has_a_time_limit(parsed):
    spec, _, kubernetes = parsed
    kinds = {SPLIT: "light", "gate": "light", "promote": "light", **dict.fromkeys(DATA, "data"),
             **dict.fromkeys(TRAINING, "training"), "evaluate": "scoring", "attack": "scoring"}
    containers = {task for task in all_tasks(spec) if not task.startswith("condition")}
    assert containers == set(kinds)
    limits = {task: kubernetes[executor_of(spec, task)].active_deadline_seconds for task in containers}
    assert limits == {task: PIPELINE.TIMEOUT_S[kind] for task, kind in kinds.items()}
    assert limits["train-vae"] == 4 * 3600 and limits[SPLIT] == 30 * 60


def test_compile_check_tells_a_stale_spec_from_a_current_one(tmp_path):
    from typer.testing import CliRunner

    from crypson.kfp.cli import app

    current = CliRunner().invoke(app, ["compile", "--repo", str(REPO), "--check", "--image", PIPELINE.DEFAULT_IMAGE])
    assert current.exit_code == 0, current.output
    stale = tmp_path / "stale.yaml"
    stale.write_text((REPO / SPEC_PATH).read_text().replace("gpu-pool", "cpu-pool"))
    result = CliRunner().invoke(app, ["compile", "--repo", str(REPO), "--check", "--output", str(stale)])
    assert result.exit_code == 1 and "out of date" in result.output


def test_params_argument_merges_presets_and_names_a_bad_key(tmp_path):
    from crypson.config import ConfigError
    from crypson.kfp.project import params_text

    merged = json.loads(params_text(REPO / "params.yaml", [REPO / "presets" / "tiny.yaml"],
                                    {"vae": {"epochs": 3}}))
    assert merged["vae"]["epochs"] == 3 and merged["vae"]["channels"] == [8, 8, 16, 16]
    assert merged["cgan"]["lr"] == yaml.safe_load((REPO / "params.yaml").read_text())["cgan"]["lr"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("vae:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'vae.epoch'"):
        params_text(REPO / "params.yaml", [bad])


def test_run_without_local_points_to_submit():
    from typer.testing import CliRunner

    from crypson.kfp.cli import app

    result = CliRunner().invoke(app, ["run", "--repo", str(REPO)])
    assert result.exit_code == 2 and "crypson pipeline submit" in result.output
