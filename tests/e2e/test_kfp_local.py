"""End to end: `crypson pipeline run --local` runs the Kubeflow pipeline with kfp.local.

The same pipeline object that is compiled to pipelines/crypson_pipeline.yaml, dsl.If included,
on the tiny configuration; kfp.local (2.17) ignores the kfp-kubernetes placement and the resource
requests, so MLflow is the embedded SQLite store of the temporary folder. Real parts only.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import REPO, run

pytest.importorskip("kfp")
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kfp-local")
    for item in ("components", "pipelines", "presets", "params.yaml", "dvc.yaml"):  # dvc.yaml: each task's params
        source = REPO / item
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, folder / item)
    done = run(["crypson", "pipeline", "run", "--local", "--preset", "tiny", "--pipeline-root", "outputs"], folder)
    return folder, done


def mlflow_state(folder: Path) -> dict:
    """Registered versions with tags and aliases, and every run's tags, from the folder's store."""
    script = (
        "import json, mlflow; c = mlflow.MlflowClient('sqlite:///mlflow.db'); print(json.dumps({"
        "'models': {m.name: {'aliases': {k: str(v) for k, v in m.aliases.items()}, 'versions': {str(v.version): "
        "v.tags for v in c.search_model_versions(f\"name='{m.name}'\")}} for m in c.search_registered_models()},"
        "'runs': [r.data.tags for r in mlflow.search_runs(search_all_experiments=True, output_format='list')]}))"
    )
    return json.loads(run([sys.executable, "-c", script], folder).stdout.strip().splitlines()[-1])


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
