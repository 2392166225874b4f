"""End to end: `crypson pipeline run --local` runs the Kubeflow pipeline with kfp.local.

The same pipeline object that is compiled to pipelines/crypson_pipeline.yaml, dsl.If included,
on the tiny configuration; kfp.local (2.17) ignores the kfp-kubernetes placement and the resource
requests, so MLflow is the embedded SQLite store of the temporary folder. Real parts only.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.helpers import REPO, run

pytest.importorskip("kfp")
pytestmark = pytest.mark.e2e


# Loaded by every Python process of the run (PYTHONPATH): in the train_vae task's first attempt it kills the
# process (SIGKILL, as a reclaimed node would) in the second batch of the second epoch, after the first
# epoch's checkpoint and before the second's. kfp.local then retries the task, as Argo would on a cluster.
KILLER = """
import os, signal, sys
if "train_vae" in sys.argv and not os.path.exists({marker!r}):
    from crypson.train import vae

    step, calls = vae.VaeTask.train_step, []

    def killed_mid_epoch_two(self, batch):
        calls.append(1)
        if len(calls) == {kill_at}:
            open({marker!r}, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self, batch)

    vae.VaeTask.train_step = killed_mid_epoch_two
"""
TINY_VAE_STEPS_PER_EPOCH = 4  # presets/tiny.yaml vae.max_train_batches
BUILD_COMMIT = "c0ffee" * 6 + "c0ff"
IMAGE = f"registry.example/crypson:{BUILD_COMMIT}@sha256:{'ab' * 32}"
# As inside an image that `make image` built and `crypson pipeline submit` referenced by digest.
IN_IMAGE = {"CRYPSON_IMAGE": IMAGE, "CRYPSON_BUILD_COMMIT": BUILD_COMMIT}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kfp-local")
    for item in ("components", "pipelines", "presets", "params.yaml", "dvc.yaml"):  # dvc.yaml: each task's params
        source = REPO / item
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, folder / item)
    hooks = tmp_path_factory.mktemp("kill-hook")
    (hooks / "sitecustomize.py").write_text(KILLER.format(marker=str(folder / "train_vae.killed"),
                                                          kill_at=TINY_VAE_STEPS_PER_EPOCH + 2))
    done = run(["crypson", "pipeline", "run", "--local", "--preset", "tiny", "--pipeline-root", "outputs"], folder,
               env={"PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")])), **IN_IMAGE})
    return folder, done


def query_store(folder: Path, expression: str):
    """The value of a Python `expression` over the folder's MLflow store (`c`: a client on it), in a fresh
    process, as JSON."""
    script = ("import json, mlflow; c = mlflow.MlflowClient('sqlite:///mlflow.db'); "
              f"print(json.dumps({expression}))")
    return json.loads(run([sys.executable, "-c", script], folder).stdout.strip().splitlines()[-1])


def mlflow_state(folder: Path) -> dict:
    """Registered versions with tags and aliases, and every run's tags, from the folder's store."""
    return query_store(folder, (
        "{'models': {m.name: {'aliases': {k: str(v) for k, v in m.aliases.items()}, 'versions': {str(v.version): "
        "v.tags for v in c.search_model_versions(f\"name='{m.name}'\")}} for m in c.search_registered_models()},"
        "'runs': [r.data.tags for r in mlflow.search_runs(search_all_experiments=True, output_format='list')]}"))


def task_output(folder: Path, task: str) -> dict:
    """The executor output kfp.local wrote for one task of the (only) run."""
    (path,) = (folder / "outputs").glob(f"crypson-*/{task}/executor_output.json")
    return json.loads(path.read_text())


def test_trains_registers_and_promotes_the_three_models(local_run):
    folder, _ = local_run
    state = mlflow_state(folder)
    assert set(state["models"]) == {"crypson-cgan", "crypson-vae", "crypson-classifier"}
    run_ids = set()
    for name, model in state["models"].items():
        assert list(model["versions"]) == ["1"], name
        assert model["aliases"] == {"candidate": "1", "champion": "1"}, name  # promote ran: the dsl.If branch
        run_ids.add(model["versions"]["1"]["kfp_run_id"])
        tags = model["versions"]["1"]
        # The code that ran: the image's reference and digest, and the commit baked into it.
        assert (tags["crypson.image"], tags["crypson.image_digest"]) == (IMAGE, f"sha256:{'ab' * 32}"), name
        assert tags["git_commit"] == tags["crypson.image_commit"] == BUILD_COMMIT, name
    (kfp_run_id,) = run_ids  # one KFP run id on every version, the link between the two UIs
    assert kfp_run_id
    stage_runs = [tags for tags in state["runs"] if "crypson.stage" in tags]
    assert {tags["crypson.stage"] for tags in stage_runs} >= {"train_cgan", "train_vae", "train_classifier",
                                                              "evaluate", "attack", "promote"}
    assert {tags["kfp_run_id"] for tags in stage_runs} == {kfp_run_id}
    parents = [tags for tags in state["runs"] if tags.get("crypson.execution") == kfp_run_id]
    assert len(parents) == 1  # all stages grouped under one parent run keyed by the KFP run id


def test_confusion_matrix_reaches_kfp_as_classification_metrics(local_run):
    folder, _ = local_run
    artifacts = task_output(folder, "evaluate")["artifacts"]
    matrix = artifacts["confusion_real"]["artifacts"][0]["metadata"]["confusionMatrix"]
    categories = [c["displayName"] for c in matrix["annotationSpecs"]]
    assert len(categories) == 47
    counts = [row["row"] for row in matrix["rows"]]
    assert sum(map(sum, counts)) == 47 * 8  # every real test image of the tiny preset, once
    accuracy = artifacts["metrics"]["artifacts"][0]["metadata"]["accuracy_real"]
    assert accuracy == pytest.approx(sum(counts[i][i] for i in range(47)) / (47 * 8), abs=1e-6)
    decision = task_output(folder, "promote")["artifacts"]["decision"]["artifacts"][0]["metadata"]
    assert decision["promoted"] is True


def test_attack_task_gets_the_evaluation_and_returns_the_security_report(local_run):
    folder, _ = local_run
    (reports,) = (folder / "outputs").glob("crypson-*/attack/security_report")
    text = (reports / "security_quality.md").read_text()
    # The quality table reads the evaluate task's metrics: without them it would show "n/a".
    assert "n/a" not in text
    accuracy = task_output(folder, "evaluate")["artifacts"]["metrics"]["artifacts"][0]["metadata"]["accuracy_real"]
    assert f"{accuracy:.3f}" in text
    figures = list((reports / "figures").iterdir())
    assert figures and all(p.suffix == ".png" for p in figures)


def vae_runs(folder: Path) -> list[dict]:
    """Every train_vae MLflow run of the folder's store: status, tags and the val_loss steps it logged."""
    return query_store(folder, (
        "[{'id': r.info.run_id, 'status': r.info.status, 'tags': r.data.tags, 'steps': [m.step for m in "
        "c.get_metric_history(r.info.run_id, 'val_loss')]} for r in mlflow.search_runs(search_all_experiments=True, "
        "filter_string=\"tags.`crypson.stage` = 'train_vae'\", output_format='list')]"))


def tensors(path: Path) -> dict:
    """Every tensor of a model file, by its place in the file."""
    import torch

    def walk(value, prefix=""):
        if isinstance(value, torch.Tensor):
            yield prefix, value
        elif isinstance(value, dict):
            for key, item in value.items():
                yield from walk(item, f"{prefix}/{key}")

    return dict(walk(torch.load(path, map_location="cpu", weights_only=True)))


def test_a_killed_training_task_resumes_from_its_checkpoint_to_the_same_weights(local_run, tmp_path):
    folder, done = local_run
    assert (folder / "train_vae.killed").is_file()  # the first attempt was killed in epoch 2; kfp.local retried
    (vae_run,) = vae_runs(folder)  # the retry went on in the killed attempt's MLflow run
    assert vae_run["status"] == "FINISHED"
    assert vae_run["tags"]["crypson.resumed_at_epoch"] == "2"  # from epoch 1's checkpoint, not from the start
    assert vae_run["steps"] == [0, 1]  # each epoch's metrics once
    (model,) = (folder / "outputs").glob("crypson-*/train-vae/vae")
    assert json.loads((model / "registration.json").read_text())["run_id"] == vae_run["id"]
    # The checkpoint lived in the pipeline root's checkpoints/ (a PVC on a cluster), in the task's own folder
    # (the resume above found it there), and the finished stage deleted it, folder and all.
    assert (folder / "outputs" / "checkpoints").is_dir()
    assert not list((folder / "outputs" / "checkpoints").glob("train_vae-*"))

    # The same task, uninterrupted, on the same data and settings, in a store of its own.
    (split,) = (folder / "outputs").glob("crypson-*/split-params/executor_output.json")
    params = json.loads(json.loads(split.read_text())["parameterValues"]["train_vae"])
    params["tracking"] = {**params.get("tracking", {}), "tracking_uri": f"sqlite:///{tmp_path}/reference.db",
                          "artifact_dir": str(tmp_path / "reference-artifacts")}
    (prepared,) = (folder / "outputs").glob("crypson-*/prepare/prepared")
    script = ("import sys; from crypson.kfp import runtime; runtime.run_stage('train_vae', sys.argv[1], "
              "{'prepared': sys.argv[2]}, {'vae': sys.argv[3]}, run_id='reference', checkpoints=sys.argv[4])")
    run([sys.executable, "-c", script, json.dumps(params), str(prepared), str(tmp_path / "vae"),
         str(tmp_path / "checkpoints")], tmp_path)
    resumed, uninterrupted = tensors(model / "vae.pt"), tensors(tmp_path / "vae" / "vae.pt")
    assert resumed.keys() == uninterrupted.keys() and resumed
    for name, value in resumed.items():
        assert torch_equal(value, uninterrupted[name]), name


def torch_equal(a, b) -> bool:
    import torch

    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))


def test_a_second_run_after_a_vae_change_reuses_the_cgan_from_the_cache(local_run):
    """KFP's caching as DVC's: run again in the same pipeline root with only `vae.lr` changed; the data tasks and
    the cGAN are cache hits (no new MLflow run, no new version), the VAE and what follows it run again. Last in
    this module: it adds a second run to the shared folder."""
    folder, _ = local_run
    raw = yaml.safe_load((folder / "params.yaml").read_text())
    raw["vae"]["lr"] *= 2
    (folder / "params-vae-lr.yaml").write_text(yaml.safe_dump(raw))
    run(["crypson", "pipeline", "run", "--local", "--params", "params-vae-lr.yaml", "--preset", "tiny",
         "--pipeline-root", "outputs"], folder, env=IN_IMAGE)  # the same image: its name is in every cache key
    state = mlflow_state(folder)
    versions = {name: sorted(model["versions"]) for name, model in state["models"].items()}
    assert versions == {"crypson-cgan": ["1"], "crypson-vae": ["1", "2"], "crypson-classifier": ["1", "2"]}
    first, second = (state["models"]["crypson-vae"]["versions"][v]["kfp_run_id"] for v in ("1", "2"))
    assert first != second
    stages = [tags["crypson.stage"] for tags in state["runs"] if "crypson.stage" in tags]
    assert {stage: stages.count(stage) for stage in ("train_cgan", "train_vae", "train_classifier", "evaluate",
                                                      "attack")} == {"train_cgan": 1, "train_vae": 2,
                                                                     "train_classifier": 2, "evaluate": 2, "attack": 2}
    # The new classifier was trained on the cached cGAN's version and the new VAE's.
    (classifier,) = query_store(folder, (
        "[r.data.params for r in mlflow.search_runs(search_all_experiments=True, filter_string=\"tags.`crypson.stage`"
        f" = 'train_classifier' and tags.kfp_run_id = '{second}'\", output_format='list')]"))
    assert (classifier["cgan.version"], classifier["vae.version"]) == ("1", "2")
    # No second ingest, prepare or train_cgan output folder: kfp.local reused the first run's.
    runs = sorted((folder / "outputs").glob("crypson-*"))
    assert len(runs) == 2
    assert not (runs[1] / "train-cgan").exists() and not (runs[1] / "prepare").exists()
    assert (runs[1] / "train-vae" / "vae").is_dir()
