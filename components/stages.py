"""One Kubeflow (kfp v2) component per Crypson stage.

Each is a few typed lines: the artifacts say what flows between stages (Dataset, Model, Metrics,
ClassificationMetrics for the confusion matrices the KFP UI draws), and the body hands paths to
crypson.kfp.runtime, which runs the stage function of crypson.stages on them. The bodies import
inside themselves because KFP ships each function's source alone into the container, whose image
(`build(image)`) holds the crypson package and kfp.

Every stage's `params` is the JSON of only the params keys it reads (its dvc.yaml list), one output
of `split_params`, which runs first on the pipeline's whole `params` argument: KFP's cache key of a
task is made of its input values, so a change to `vae.lr` leaves the other stages' keys as they were.
No stage takes the KFP run id as an input (it would change every task's key every run): the stages that
log to MLflow read it from KFP_RUN_ID, which the pipeline sets from the pod's label, and take the code's
commit; both become MLflow tags. Training stages keep their checkpoints in CRYPSON_CHECKPOINTS, a volume
that outlives a killed pod (crypson.kfp.runtime.task_checkpoints). Each training stage has a second component, `<stage>_trainjob`, for more than one GPU: it runs the same stage as a Kubeflow
Trainer TrainJob (crypson.kfp.launcher) and returns the same artifacts, so the pipeline wires either alike.
No `from __future__ import annotations` here: KFP reads the annotations as types.
"""


from typing import NamedTuple

from kfp import dsl
from kfp.dsl import (HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output, TaskConfig,
                     TaskConfigField, TaskConfigPassthrough)
from kfp.dsl.python_component import PythonComponent


def split_params(params: str, keys: dict, presets: str, preset: str, data_source: str, data_split: str,
                 cgan_epochs: int, vae_epochs: int, classifier_epochs: int, cipher_scheme: str) -> NamedTuple(
        "TaskParams", [("ingest", str), ("prepare", str), ("validate", str), ("train_cgan", str),
                       ("train_vae", str), ("train_classifier", str), ("evaluate", str), ("attack", str),
                       ("gate", str), ("promote", str)]):
    """The pipeline's params, with the named preset (one of `presets`, presets/*.yaml) and the typed run
    parameters that are set ("" and 0 are not) on top, validated, and cut into what each task reads (`keys`:
    task -> params keys, dvc.yaml's lists): one JSON text per task, in crypson.kfp.runtime.PARAMS_TASKS order.
    `presets` is JSON text (name -> partial params): a KFP struct cannot hold the presets' nulls."""
    import json

    from crypson.kfp import runtime

    values = {"data_source": data_source, "data_split": data_split, "cgan_epochs": cgan_epochs,
              "vae_epochs": vae_epochs, "classifier_epochs": classifier_epochs, "cipher_scheme": cipher_scheme}
    return runtime.split_params(runtime.overlay_run_parameters(params, json.loads(presets), preset, values), keys)


def ingest(params: str, data_repo_url: str, data_rev: str, dvc_remote: str, dvc_remote_url: str,
           raw: Output[Dataset]):
    """Raw EMNIST-format files: DVC's version at `data_rev` of `data_repo_url`, else per `params` (seed, data)."""
    from crypson.kfp import runtime

    raw.metadata["source"] = runtime.ingest(params, raw.path, data_repo_url, data_rev, dvc_remote, dvc_remote_url)


def prepare(params: str, raw: Input[Dataset], prepared: Output[Dataset]):
    """Padded 32x32 train/val/test splits, classes, manifest and metadata table."""
    from crypson.kfp import runtime

    runtime.run_stage("prepare", params, {"raw": raw.path}, {"prepared": prepared.path})


def validate(params: str, prepared: Input[Dataset], report: Output[Artifact], data_docs: Output[HTML]):
    """Great-expectations suite on the metadata table; fails the run on a violated expectation. The KFP UI
    shows `data_docs`, GX's Data Docs page of the validation."""
    from crypson.kfp import runtime

    result = runtime.run_stage("validate", params, {"prepared": prepared.path},
                               {"validation": report.path, "data_docs": data_docs.path})
    report.metadata["success"] = result["success"]


def train_cgan(params: str, git_commit: str, prepared: Input[Dataset],
               cgan: Output[Model], metrics: Output[Metrics]):
    """Train and register the conditional GAN (`crypson-cgan`)."""
    from crypson.kfp import runtime

    results = runtime.run_stage("train_cgan", params, {"prepared": prepared.path}, {"cgan": cgan.path},
                                git_commit=git_commit)
    runtime.log_metrics(metrics, results)
    cgan.metadata.update(runtime.registration(cgan.path))


def train_vae(params: str, git_commit: str, prepared: Input[Dataset],
              vae: Output[Model], metrics: Output[Metrics]):
    """Train and register the VAE (`crypson-vae`)."""
    from crypson.kfp import runtime

    results = runtime.run_stage("train_vae", params, {"prepared": prepared.path}, {"vae": vae.path},
                                git_commit=git_commit)
    runtime.log_metrics(metrics, results)
    vae.metadata.update(runtime.registration(vae.path))


def train_classifier(params: str, git_commit: str, prepared: Input[Dataset], cgan: Input[Model], vae: Input[Model], classifier: Output[Model], metrics: Output[Metrics]):
    """Train and register the latent classifier over the VAE's frozen decoder (`crypson-classifier`)."""
    from crypson.kfp import runtime

    results = runtime.run_stage("train_classifier", params,
                                {"prepared": prepared.path, "cgan": cgan.path, "vae": vae.path},
                                {"classifier": classifier.path}, git_commit=git_commit)
    runtime.log_metrics(metrics, results)
    classifier.metadata.update(runtime.registration(classifier.path))


def train_cgan_trainjob(params: str, run_id: str, git_commit: str, workspace: str, image: str, deadline_s: int,
                        prepared: Input[Dataset], cgan: Output[Model], metrics: Output[Metrics],
                        task_config: TaskConfig):
    """train_cgan on several GPUs: a Kubeflow Trainer TrainJob that this task launches and waits for."""
    from crypson.kfp import launcher

    launcher.run_component("train_cgan", params, {"prepared": prepared.path}, cgan, metrics, run_id=run_id,
                           git_commit=git_commit, workspace=workspace, image=image, task_config=task_config,
                           deadline_s=deadline_s)


def train_vae_trainjob(params: str, run_id: str, git_commit: str, workspace: str, image: str, deadline_s: int,
                       prepared: Input[Dataset], vae: Output[Model], metrics: Output[Metrics],
                       task_config: TaskConfig):
    """train_vae on several GPUs: a Kubeflow Trainer TrainJob that this task launches and waits for."""
    from crypson.kfp import launcher

    launcher.run_component("train_vae", params, {"prepared": prepared.path}, vae, metrics, run_id=run_id,
                           git_commit=git_commit, workspace=workspace, image=image, task_config=task_config,
                           deadline_s=deadline_s)


def train_classifier_trainjob(params: str, run_id: str, git_commit: str, workspace: str, image: str,
                              deadline_s: int, prepared: Input[Dataset], cgan: Input[Model], vae: Input[Model],
                              classifier: Output[Model], metrics: Output[Metrics], task_config: TaskConfig):
    """train_classifier on several GPUs: a Kubeflow Trainer TrainJob that this task launches and waits for."""
    from crypson.kfp import launcher

    launcher.run_component("train_classifier", params, {"prepared": prepared.path, "cgan": cgan.path,
                                                        "vae": vae.path}, classifier, metrics, run_id=run_id,
                           git_commit=git_commit, workspace=workspace, image=image, task_config=task_config,
                           deadline_s=deadline_s)


def evaluate(params: str, git_commit: str, prepared: Input[Dataset], cgan: Input[Model],
             vae: Input[Model], classifier: Input[Model], metrics: Output[Metrics],
             confusion_real: Output[ClassificationMetrics],
             confusion_generated: Output[ClassificationMetrics]) -> dict:
    """Receiver-path accuracy and confusion matrices (real and cGAN images), VAE PSNR/SSIM."""
    from crypson.kfp import runtime

    inputs = {"prepared": prepared.path, "cgan": cgan.path, "vae": vae.path, "classifier": classifier.path}
    results = runtime.run_stage("evaluate", params, inputs, {"confusion_real": confusion_real.path,
                                                             "confusion_generated": confusion_generated.path},
                                git_commit=git_commit)
    for confusion in (confusion_real, confusion_generated):
        confusion.log_confusion_matrix(*runtime.confusion_matrix(confusion.path, prepared.path))
    return runtime.log_metrics(metrics, results)


def attack(params: str, git_commit: str, evaluation: dict, prepared: Input[Dataset],
           cgan: Input[Model], vae: Input[Model], classifier: Input[Model], metrics: Output[Metrics],
           report: Output[Markdown], security_report: Output[Artifact], security_page: Output[HTML]) -> dict:
    """Every attacker against every mask scheme; the advantage per scheme; the security-and-quality report
    (a folder, and `security_page`: one HTML page with its figures, which the KFP UI shows)."""
    from crypson.kfp import runtime

    inputs = {"prepared": prepared.path, "cgan": cgan.path, "vae": vae.path, "classifier": classifier.path}
    outputs = {"attack_report": report.path, "security_report": security_report.path,
               "security_page": security_page.path}
    results = runtime.run_stage("attack", params, inputs, outputs, git_commit=git_commit,
                                results={"evaluate": evaluation})
    return runtime.log_metrics(metrics, results)


def gate(params: str, evaluation: dict, attacks: dict) -> bool:
    """True when every promotion gate of `params` (the promote section) passes (the pipeline's `dsl.If`)."""
    from crypson.kfp import runtime

    return runtime.gates_pass(params, evaluation, attacks)


def promote(params: str, git_commit: str, evaluation: dict, attacks: dict, prepared: Input[Dataset],
            cgan: Input[Model], vae: Input[Model], classifier: Input[Model], decision: Output[Artifact]):
    """Move the `champion` alias to this run's three registered versions (the gates are checked again)."""
    from crypson.kfp import runtime

    inputs = {"prepared": prepared.path, "cgan": cgan.path, "vae": vae.path, "classifier": classifier.path}
    result = runtime.run_stage("promote", params, inputs, {"promotion": decision.path},
                               git_commit=git_commit, results={"evaluate": evaluation, "attacks": attacks})
    decision.metadata["promoted"] = result["promoted"]


class StageComponents(NamedTuple):
    """The components, built for one container image."""

    split_params: PythonComponent
    ingest: PythonComponent
    prepare: PythonComponent
    validate: PythonComponent
    train_cgan: PythonComponent
    train_vae: PythonComponent
    train_classifier: PythonComponent
    evaluate: PythonComponent
    attack: PythonComponent
    gate: PythonComponent
    promote: PythonComponent
    train_cgan_trainjob: PythonComponent
    train_vae_trainjob: PythonComponent
    train_classifier_trainjob: PythonComponent


# What KFP passes to the TrainJob launchers (their `task_config`) instead of, or as well as, applying it to their
# own pod: the GPUs and the GPU pool's placement go to the TrainJob's nodes only (the launcher runs on any node and
# holds no GPU); the environment (MLflow settings as Secret references, the image's name) and the volumes (the
# run's workspace PVC, where the stage's inputs, outputs and checkpoints live) go to both.
TRAINJOB_PASSTHROUGHS = (
    TaskConfigPassthrough(TaskConfigField.RESOURCES, apply_to_task=False),
    TaskConfigPassthrough(TaskConfigField.KUBERNETES_NODE_SELECTOR, apply_to_task=False),
    TaskConfigPassthrough(TaskConfigField.KUBERNETES_TOLERATIONS, apply_to_task=False),
    TaskConfigPassthrough(TaskConfigField.KUBERNETES_AFFINITY, apply_to_task=False),
    TaskConfigPassthrough(TaskConfigField.ENV, apply_to_task=True),
    TaskConfigPassthrough(TaskConfigField.KUBERNETES_VOLUMES, apply_to_task=True),
)
TRAINJOB_LAUNCHERS = (train_cgan_trainjob, train_vae_trainjob, train_classifier_trainjob)


def build(image: str) -> StageComponents:
    """Every stage as a component running in `image` (and each training stage's TrainJob launcher).

    The image carries crypson and kfp already (the `kubeflow` extra), so nothing is pip-installed
    when a task starts: a cluster without PyPI access runs the pipeline, and every task runs the
    exact versions the image was built with.
    """
    functions = (split_params, ingest, prepare, validate, train_cgan, train_vae, train_classifier, evaluate, attack,
                 gate, promote, *TRAINJOB_LAUNCHERS)
    return StageComponents(*(dsl.component(function, base_image=image, install_kfp_package=False,
                                           task_config_passthroughs=list(TRAINJOB_PASSTHROUGHS)
                                           if function in TRAINJOB_LAUNCHERS else None)
                             for function in functions))
