"""End to end: the tiny configuration through `dvc repro` in a fresh git + DVC repository.

Real parts only: the installed `crypson` CLI, DVC, great-expectations and an embedded MLflow
store in the temporary repository.
"""

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.helpers import run

pytestmark = pytest.mark.e2e


def edit_params(repo: Path, **sections: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def registry(repo: Path) -> dict:
    """name -> {'versions': [...], 'aliases': {...}} read from the repo's embedded MLflow store."""
    script = (
        "import json, mlflow; c = mlflow.MlflowClient('sqlite:///mlflow.db'); print(json.dumps({"
        "m.name: {'aliases': {k: str(v) for k, v in m.aliases.items()}, 'versions': sorted(str(v.version) "
        "for v in c.search_model_versions(f\"name='{m.name}'\")), 'tags': {str(v.version): v.tags "
        "for v in c.search_model_versions(f\"name='{m.name}'\")}, 'descriptions': {str(v.version): v.description "
        "for v in c.search_model_versions(f\"name='{m.name}'\")}} for m in c.search_registered_models()}))"
    )
    return json.loads(run([sys.executable, "-c", script], repo).stdout.strip().splitlines()[-1])


def test_pipeline_registers_three_candidates_and_promotes(pipeline):
    repo, _ = pipeline
    models = registry(repo)
    assert set(models) == {"crypson-cgan", "crypson-vae", "crypson-classifier"}
    for name, model in models.items():
        assert model["aliases"] == {"candidate": "1", "champion": "1"}, name
        tags = model["tags"]["1"]
        assert tags["git_commit"] and len(tags["data_version"]) == 64 and tags["data_source"] == "glyphs"
        assert tags["dvc_data_md5"].endswith(".dir")  # the DVC hash of data/raw
    assert models["crypson-classifier"]["tags"]["1"]["vae_version"] == "1"
    decision = json.loads((repo / "reports" / "promotion.json").read_text())
    assert decision["promoted"] is True
    assert {model["tags"]["1"]["gates"] for model in models.values()} == {"passed"}
    for name, model in models.items():  # each version's description is its model card
        card = model["descriptions"]["1"]
        assert card.startswith(f"# {name} v1") and "**Known limits.**" in card and "| keyed-modular |" in card


def test_the_execution_run_ends_with_promote_and_carries_the_headline(pipeline):
    """The runs table answers "which execution shipped, with what figures" from the parent row alone."""
    repo, _ = pipeline
    script = (
        "import json, mlflow; c = mlflow.MlflowClient('sqlite:///mlflow.db');"
        "runs = c.search_runs([e.experiment_id for e in c.search_experiments()]);"
        "print(json.dumps([{'name': r.info.run_name, 'status': r.info.status, 'start': r.info.start_time,"
        " 'end': r.info.end_time, 'metrics': r.data.metrics, 'tags': r.data.tags} for r in runs]))"
    )
    runs = json.loads(run([sys.executable, "-c", script], repo).stdout.strip().splitlines()[-1])
    parents = [r for r in runs if "crypson.execution" in r["tags"]]
    assert len(parents) == 1
    parent, stages = parents[0], [r for r in runs if "crypson.stage" in r["tags"]]
    assert parent["status"] == "FINISHED" and parent["tags"]["promoted"] == "true"
    assert parent["name"].split()[1] == "glyphs/balanced" and parent["name"].split()[2] == "params"
    assert parent["tags"]["mlflow.source.git.commit"] == parent["tags"]["git_commit"].removesuffix("-dirty")
    evaluation = json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert parent["metrics"]["accuracy_real"] == evaluation["accuracy_real"] and parent["metrics"]["promoted"] == 1
    assert {"psnr_db", "class_consistency", "accuracy_generated", "sender_candidates"} <= set(parent["metrics"])
    # its duration spans the stages: it ends when promote ends
    promote = next(r for r in stages if r["name"] == "promote")
    assert parent["start"] <= min(r["start"] for r in stages) and parent["end"] >= promote["end"]
    assert all(r["status"] == "FINISHED" for r in stages)
    assert sorted(r["name"] for r in stages) == ["attack", "evaluate", "promote", "train_cgan", "train_classifier",
                                                 "train_vae", "validate"]


def test_dvc_metrics_and_versioned_data(pipeline):
    repo, _ = pipeline
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    evaluation = shown[""]["data"]["metrics/evaluate.json"]["data"]
    assert evaluation["chance"] == pytest.approx(1 / 47, abs=1e-6)
    # The metric agrees with the per-image predictions the confusion plot is drawn from.
    for split in ("real", "generated"):
        rows = (repo / "plots" / f"confusion_{split}.csv").read_text().splitlines()[1:]
        hits = sum(actual == predicted for actual, predicted in (row.split(",") for row in rows))
        assert evaluation[f"accuracy_{split}"] == pytest.approx(hits / len(rows), abs=1e-6)
    assert len((repo / "plots" / "confusion_generated.csv").read_text().splitlines()) == 1 + 47 * 4
    assert 0 < evaluation["psnr_db"] < 60 and 0 < evaluation["ssim"] <= 1
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert [out["path"] for out in lock["stages"]["ingest"]["outs"]] == ["data/raw"]
    assert (repo / "plots" / "confusion_real.csv").read_text().startswith("actual,predicted")
    assert json.loads((repo / "reports" / "validation.json").read_text())["success"] is True
    assert not list((repo / "checkpoints").glob("*.pt"))  # removed once each stage finished
    assert "receiver_accuracy" in shown[""]["data"]["metrics/attacks.json"]["data"]
    # Untrained tiny models: the receiver is at chance, so advantages are undefined (null), but every
    # scheme and attacker is there.
    attacks = json.loads((repo / "metrics" / "attacks.json").read_text())
    assert set(attacks["advantage"]) == {"report", "keyed-timestep", "keyed-gaussian", "keyed-modular"}
    assert {"known-model", "linear-probe", "learned-inversion"} <= set(attacks["advantage"]["keyed-modular"])
    assert "## keyed-modular" in (repo / "reports" / "attacks.md").read_text()


def test_security_and_quality_report_metrics_and_figures(pipeline):
    repo, _ = pipeline
    evaluation = json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert 0 <= evaluation["class_consistency_ci_low"] <= evaluation["class_consistency"] <= 1
    assert evaluation["frechet_distance"] >= 0 and evaluation["frechet_distance_real_vs_real"] >= 0
    attacks = json.loads((repo / "metrics" / "attacks.json").read_text())
    schemes = {"report", "keyed-timestep", "keyed-gaussian", "keyed-modular"}
    assert set(attacks["cer"]) == schemes and 0 <= attacks["default_scheme_cer"] <= 1
    assert set(attacks["channel_noise_accuracy"]["keyed-modular"]) == {"0", "0.5"}  # the tiny preset's levels
    assert attacks["inversion_psnr_db"]["report"]["known-model"] > 60  # the public mask comes off exactly
    assert set(attacks["nonce_reuse_advantage"]) == schemes
    report = (repo / "reports" / "security_quality.md").read_text()
    for section in ("## Quality", "## End to end", "## Channel noise", "### Image inversion", "### Nonce reuse"):
        assert section in report, section
    for figure in ("samples_per_class", "reconstructions", "latent_pca", "latent_tsne", "channel_noise"):
        assert (repo / "reports" / "figures" / f"{figure}.png").read_bytes().startswith(b"\x89PNG"), figure
        assert f"figures/{figure}.png" in report
    assert (repo / "plots" / "channel_noise.csv").read_text().startswith("noise_std,report,keyed-timestep")
    page = (repo / "reports" / "security_quality.html").read_text()  # one page, figures inlined
    assert page.count("data:image/png;base64,") == report.count("](figures/") and "data-missing" not in page
    assert "<h2>End to end</h2>" in page
    # GX's Data Docs of the validate stage: the index lists both suites' validations
    index = (repo / "reports" / "data_docs" / "index.html").read_text()
    assert "metadata" in index and "train_class_counts" in index


def test_second_repro_does_nothing(pipeline):
    repo, _ = pipeline
    again = run(["dvc", "repro"], repo)
    assert "Data and pipelines are up to date" in again.stdout


def test_queued_dvc_experiments_keep_their_runs_and_versions(pipeline_copy):
    """`dvc exp run --queue` runs each experiment in a temporary copy: its runs and registry versions must
    land in the project's store (DVC_ROOT), one execution (parent run) per experiment."""
    repo, _ = pipeline_copy
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    run(["git", "add", "-A"], repo)
    run([*git, "commit", "-qm", "first run"], repo)
    # one retrains the classifier (a new version), the other only re-decides promotion (cheap): both land
    run(["dvc", "exp", "run", "--queue", "-S", "classifier.epochs=3"], repo)
    run(["dvc", "exp", "run", "--queue", "-S", "promote.min_psnr_db=99"], repo)
    run(["dvc", "exp", "run", "--run-all"], repo)
    models = registry(repo)
    assert models["crypson-classifier"]["versions"] == ["1", "2"]
    assert models["crypson-vae"]["versions"] == ["1"]  # only what the change touches re-ran
    assert models["crypson-classifier"]["tags"]["1"]["gates"] == "failed"  # the second's verdict (PSNR >= 99)
    script = (
        "import json, mlflow; c = mlflow.MlflowClient('sqlite:///mlflow.db');"
        "ids = [e.experiment_id for e in c.search_experiments()];"
        "parents = c.search_runs(ids, filter_string=\"tags.`dvc_experiment` != ''\");"
        "print(json.dumps({p.data.tags['dvc_experiment']: [p.info.status, sorted(r.info.run_name for r in"
        " c.search_runs(ids, filter_string=f\"tags.`mlflow.parentRunId` = '{p.info.run_id}'\"))] for p in parents}))"
    )
    executions = json.loads(run([sys.executable, "-c", script], repo).stdout.strip().splitlines()[-1])
    assert sorted(executions.values()) == [["FINISHED", ["attack", "evaluate", "promote", "train_classifier"]],
                                           ["FINISHED", ["promote"]]]
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    experiments = [exp for row in shown for exp in (row.get("experiments") or [])]
    figures = [e["revs"][0]["data"]["metrics"]["metrics/evaluate.json"]["data"] for e in experiments]
    assert len(experiments) == 2 and all(0 <= f["accuracy_real"] <= 1 for f in figures)


def test_param_change_reruns_only_dependents_and_failed_gate_keeps_champion(pipeline, pipeline_copy):
    repo, _ = pipeline_copy
    original, _ = pipeline
    original_files = sorted((original / "mlartifacts").rglob("*"))
    # The attacker-advantage gate on, too: the tiny models' receiver is at chance, so the advantage (and its
    # lower 95% bound, the gate's statistic) cannot be measured, and an unmeasured advantage must fail it.
    edit_params(repo, vae={"lr": 0.002}, promote={"min_psnr_db": 99.0, "max_attacker_advantage": 0.05})
    rerun = run(["dvc", "repro"], repo)
    assert "Stage 'train_cgan' didn't change, skipping" in rerun.stdout
    assert "Running stage 'train_vae'" in rerun.stdout and "Running stage 'train_classifier'" in rerun.stdout
    assert "gate failed: psnr_db" in rerun.stderr
    assert "gate failed: default_scheme_max_advantage_ci_low = nan" in rerun.stderr
    models = registry(repo)
    assert models["crypson-vae"]["aliases"] == {"candidate": "2", "champion": "1"}
    assert models["crypson-classifier"]["aliases"] == {"candidate": "2", "champion": "1"}
    assert models["crypson-cgan"]["versions"] == ["1"]
    decision = json.loads((repo / "reports" / "promotion.json").read_text())
    failed = [gate for gate in decision["gates"] if not gate["passed"]]
    assert [gate["metric"] for gate in failed] == ["psnr_db", "default_scheme_max_advantage_ci_low"]
    assert failed[0]["margin"] == pytest.approx(decision["gates"][2]["value"] - 99.0, abs=1e-5)
    attacks = json.loads((repo / "metrics" / "attacks.json").read_text())
    assert attacks["default_scheme_max_advantage_ci_low"] is None and math.isnan(failed[1]["value"])
    assert failed[1]["threshold"] == 0.05 and failed[1]["kind"] == "max"
    assert decision["promoted"] is False and decision["champion_after"] == decision["champion_before"]
    # The shared repository saw none of it: the copy's store and artifacts are its own.
    assert registry(original)["crypson-vae"]["versions"] == ["1"]
    assert sorted((original / "mlartifacts").rglob("*")) == original_files


def test_validation_failure_stops_the_pipeline_with_a_summary(pipeline_copy):
    repo, _ = pipeline_copy
    edit_params(repo, validate={"min_pixel_std": 0.45})
    failed = run(["dvc", "repro"], repo, check=False)
    assert failed.returncode != 0
    assert "data validation failed" in failed.stderr
    assert "std: expect_column_values_to_be_between" in failed.stderr
    report = json.loads((repo / "reports" / "validation.json").read_text())
    assert report["success"] is False
    assert "Data Docs: " in failed.stderr and (repo / "reports" / "data_docs" / "index.html").is_file()


def test_missing_emnist_files_are_a_clear_error(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"source": "emnist", "emnist_dir": "nowhere"}}))
    failed = run(["crypson", "stage", "ingest"], tmp_path, check=False)
    assert failed.returncode == 2
    assert "nowhere" in failed.stderr and "emnist-balanced-train-images-idx3-ubyte.gz" in failed.stderr
    assert not (tmp_path / "data" / "raw").exists()
