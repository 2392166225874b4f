"""crypson.kfp.runtime: what the Kubeflow components run, tested without a KFP runtime."""

import json
import math
import os
from pathlib import Path

import pytest
import yaml

from crypson.config import ConfigError, parse_config
from crypson.data.prepare import hash_files
from crypson.kfp import runtime
from crypson.stages import Layout, ingest

REPO = Path(__file__).resolve().parents[2]


def tiny_params(**sections) -> str:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    preset = yaml.safe_load((REPO / "presets" / "tiny.yaml").read_text())
    from crypson.config import deep_merge

    return json.dumps(deep_merge(deep_merge(raw, preset), sections))


def test_confusion_matrix_counts_every_class_in_label_order(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps(["0", "1", "A"]))
    predictions = tmp_path / "confusion.csv"
    predictions.write_text("actual,predicted\n0,0\n0,A\n1,1\nA,A\nA,A\n")
    categories, matrix = runtime.confusion_matrix(str(predictions), str(tmp_path))
    assert categories == ["0", "1", "A"]
    assert matrix == [[1, 0, 1], [0, 1, 0], [0, 0, 2]]


def test_confusion_matrix_names_an_unknown_class(tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps(["0", "1"]))
    predictions = tmp_path / "confusion.csv"
    predictions.write_text("actual,predicted\n0,Z\n")
    with pytest.raises(ValueError, match="'Z'"):
        runtime.confusion_matrix(str(predictions), str(tmp_path))


def test_numeric_metrics_flattens_and_drops_what_kfp_cannot_hold():
    results = {"accuracy": 0.5, "best_epoch": 2, "advantage": {"keyed": {"probe": 0.01, "learned": None}},
               "psnr": math.nan, "promoted": True, "note": "text"}
    assert runtime.numeric_metrics(results) == {"accuracy": 0.5, "best_epoch": 2.0,
                                                "advantage.keyed.probe": 0.01}


def test_log_metrics_logs_each_flattened_value_and_writes_the_artifacts_file(tmp_path):
    class Recorder:
        def __init__(self, path):
            self.logged, self.path = {}, str(path)

        def log_metric(self, metric, value):
            self.logged[metric] = value

    recorder = Recorder(tmp_path / "metrics")
    returned = runtime.log_metrics(recorder, {"a": 1, "b": {"c": 0.25}, "d": None})
    assert recorder.logged == returned == {"a": 1.0, "b.c": 0.25}
    assert json.loads((tmp_path / "metrics").read_text()) == returned  # a file: kfp.local's cache needs one


def test_gates_follow_params_thresholds(capsys):
    evaluation = {"accuracy_real": 0.9, "accuracy_generated": 0.8, "psnr_db": 20.0}
    strict = tiny_params(promote={"min_accuracy_real": 0.95, "min_accuracy_generated": 0.0, "min_psnr_db": 0.0,
                                  "max_attacker_advantage": None})
    assert runtime.gates_pass(tiny_params(), evaluation, {}) is True
    assert runtime.gates_pass(strict, evaluation, {}) is False
    assert "gate accuracy_real: value 0.9, min 0.95: FAIL" in capsys.readouterr().out
    # An advantage that could not be measured (null in attacks.json) fails its gate.
    guarded = tiny_params(promote={"max_attacker_advantage": 0.02})
    assert runtime.gates_pass(guarded, evaluation, {"default_scheme_max_advantage_ci_low": None}) is False
    assert runtime.gates_pass(guarded, evaluation, {}) is False
    assert runtime.gates_pass(guarded, evaluation, {"default_scheme_max_advantage_ci_low": 0.01}) is True


@pytest.mark.parametrize("uri, artifact_dir, environment, error", [
    ("sqlite:///mlflow.db", "/abs/mlartifacts", {}, "tracking_uri 'sqlite:///mlflow.db' is relative"),
    ("sqlite:////abs/mlflow.db", "mlartifacts", {}, "artifact_dir 'mlartifacts' is relative"),
    ("sqlite:////abs/mlflow.db", "/abs/mlartifacts", {}, None),
    ("sqlite:///mlflow.db", "mlartifacts", {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}, None),
])
def test_check_tracking_refuses_relative_embedded_stores(uri, artifact_dir, environment, error):
    config = parse_config({"tracking": {"tracking_uri": uri, "artifact_dir": artifact_dir}})
    if error is None:
        runtime.check_tracking(config, environment)
    else:
        with pytest.raises(ValueError, match=error):
            runtime.check_tracking(config, environment)


def test_task_environment_sets_then_restores(monkeypatch):
    monkeypatch.setenv("KFP_RUN_ID", "before")
    monkeypatch.delenv("CRYPSON_EXECUTION_ID", raising=False)
    monkeypatch.delenv("CRYPSON_GIT_COMMIT", raising=False)
    with runtime.task_environment("run-123", ""):
        assert os.environ["KFP_RUN_ID"] == os.environ["CRYPSON_EXECUTION_ID"] == "run-123"
        assert "CRYPSON_GIT_COMMIT" not in os.environ  # empty: the CLI asks git
    assert os.environ["KFP_RUN_ID"] == "before"
    assert "CRYPSON_EXECUTION_ID" not in os.environ


def test_select_params_nests_dotted_keys_with_their_resolved_values():
    raw = json.loads(tiny_params(vae={"lr": 0.5}))
    del raw["data"]["split"]  # left out: its default is spelled out, so the text does not depend on it
    selected = runtime.select_params(parse_config(raw), ["seed", "data.split", "vae", "cipher.candidates"])
    assert selected == {"seed": raw["seed"], "data": {"split": "balanced"}, "cipher": {"candidates": 4},
                        "vae": raw["vae"]}
    with pytest.raises(ValueError, match="params key 'vae.lrr' names no setting"):
        runtime.select_params(parse_config({}), ["vae.lrr"])
    with pytest.raises(ValueError, match="params key 'seed.value' names no setting"):
        runtime.select_params(parse_config({}), ["seed.value"])


def test_split_params_gives_each_task_its_keys_and_the_defaults_elsewhere():
    keys = {task: ["seed"] for task in runtime.PARAMS_TASKS} | {"train_vae": ["seed", "vae"], "gate": ["promote"]}
    params = tiny_params(vae={"lr": 0.5}, cgan={"lr": 0.25})
    texts = dict(zip(runtime.PARAMS_TASKS, runtime.split_params(params, keys)))
    vae = runtime.load_params(texts["train_vae"])
    assert vae.vae.lr == 0.5 and vae.vae.channels == (8, 8, 16, 16)  # its own section: the run's values
    assert vae.cgan.lr == parse_config({}).cgan.lr  # a section it does not read: the code's default
    assert json.loads(texts["gate"]) == {"promote": json.loads(tiny_params())["promote"]}
    assert texts["ingest"] == texts["prepare"] == '{"seed":42}'
    # The same values spelled differently (key order, a default left out) give the same text: the same cache key.
    reordered = dict(reversed(list(json.loads(tiny_params(vae={"lr": 0.5})).items())))
    assert runtime.split_params(json.dumps(reordered), keys)[runtime.PARAMS_TASKS.index("train_vae")] == \
        texts["train_vae"]


def test_split_params_validates_the_whole_and_takes_exactly_the_tasks():
    keys = {task: ["seed"] for task in runtime.PARAMS_TASKS}
    with pytest.raises(ConfigError, match="unknown key 'cgan.lrr'"):  # in a section no task here reads
        runtime.split_params(tiny_params(cgan={"lrr": 1.0}), keys)
    with pytest.raises(ValueError, match=r"for tasks \['ingest'\]; expected exactly \['ingest', 'prepare'"):
        runtime.split_params(tiny_params(), {"ingest": ["seed"]})


def test_split_params_component_outputs_are_the_runtime_tasks_in_order():
    from crypson.kfp.project import load_pipeline_module

    load_pipeline_module(REPO)  # puts the repository's components/ on sys.path
    from components import stages

    assert stages.split_params.__annotations__["return"]._fields == runtime.PARAMS_TASKS


def test_run_environment_names_the_run_and_leaves_out_what_is_unset():
    assert runtime.run_environment("run-1", "abc") == {"KFP_RUN_ID": "run-1", "CRYPSON_EXECUTION_ID": "run-1",
                                                       "CRYPSON_GIT_COMMIT": "abc"}
    assert runtime.run_environment("run-1", "") == {"KFP_RUN_ID": "run-1", "CRYPSON_EXECUTION_ID": "run-1"}


def test_run_stage_refuses_unknown_names():
    with pytest.raises(ValueError, match="unknown stage 'train'"):
        runtime.run_stage("train", tiny_params(), {}, {})
    with pytest.raises(ValueError, match=r"unknown artifact names \['model'\]"):
        runtime.run_stage("prepare", tiny_params(), {"model": "/x"}, {})


def test_components_write_what_the_dvc_layout_holds(tmp_path):
    """ingest and prepare through artifacts give the same bytes as the stages on a Layout."""
    params = tiny_params()
    raw, prepared = tmp_path / "artifacts" / "raw", tmp_path / "artifacts" / "prepared"
    assert runtime.ingest(params, str(raw)) == "ingest stage, data.source=glyphs"
    runtime.run_stage("prepare", params, {"raw": str(raw)}, {"prepared": str(prepared)})
    layout = Layout(tmp_path / "dvc")
    ingest(runtime.load_params(params), layout)
    names = sorted(p.name for p in layout.raw.iterdir())
    assert names == sorted(p.name for p in raw.iterdir())
    assert all((layout.raw / n).read_bytes() == (raw / n).read_bytes() for n in names)
    manifest = json.loads((prepared / "manifest.json").read_text())
    assert manifest["data_version"] == hash_files(list(layout.raw.iterdir()))
    assert manifest["counts"]["test"] == 47 * 8


def test_local_run_makes_embedded_store_paths_absolute(tmp_path):
    from crypson.kfp.local import local_tracking_overrides

    relative = parse_config({"tracking": {"tracking_uri": "sqlite:///runs/mlflow.db", "artifact_dir": "mlartifacts"}})
    assert local_tracking_overrides(relative, tmp_path) == {"tracking": {
        "tracking_uri": f"sqlite:///{tmp_path.resolve()}/runs/mlflow.db",
        "artifact_dir": str(tmp_path.resolve() / "mlartifacts")}}
    server = parse_config({"tracking": {"tracking_uri": "http://mlflow:5000", "artifact_dir": "/srv/artifacts"}})
    assert local_tracking_overrides(server, tmp_path)["tracking"] == {"tracking_uri": "http://mlflow:5000",
                                                                      "artifact_dir": "/srv/artifacts"}


def test_a_layout_keeps_checkpoints_in_its_own_folder_unless_told_another(tmp_path):
    assert Layout(tmp_path / "work", tmp_path / "pvc").checkpoint("vae") == tmp_path / "pvc" / "vae.pt"
    assert Layout(tmp_path / "work").checkpoint("vae") == tmp_path / "work" / "checkpoints" / "vae.pt"


def test_task_checkpoints_are_named_by_stage_params_and_every_input_byte(tmp_path):
    prepared = tmp_path / "prepared"
    (prepared / "splits").mkdir(parents=True)
    (prepared / "splits" / "train.npz").write_bytes(b"\x00" * 100)
    (prepared / "manifest.json").write_text('{"data_version": "a"}')
    root = str(tmp_path / "checkpoints")
    where = runtime.task_checkpoints(root, "train_vae", '{"vae": {"lr": 0.001}}', {"prepared": str(prepared)})
    assert where.parent == tmp_path / "checkpoints" and where.name.startswith("train_vae-")
    # The same task again (a retried attempt, or a later run of the same inputs): the same folder.
    assert runtime.task_checkpoints(root, "train_vae", '{"vae": {"lr": 0.001}}', {"prepared": str(prepared)}) == where
    others = {runtime.task_checkpoints(root, "train_vae", '{"vae": {"lr": 0.002}}', {"prepared": str(prepared)}),
              runtime.task_checkpoints(root, "train_cgan", '{"vae": {"lr": 0.001}}', {"prepared": str(prepared)})}
    (prepared / "splits" / "train.npz").write_bytes(b"\x00" * 99 + b"\x01")  # one byte of the data
    others.add(runtime.task_checkpoints(root, "train_vae", '{"vae": {"lr": 0.001}}', {"prepared": str(prepared)}))
    assert len(others) == 3 and where not in others
    with pytest.raises(ValueError, match="'checkpoints' is not an absolute path"):
        runtime.task_checkpoints("checkpoints", "train_vae", "{}", {})


def test_run_stage_takes_the_run_id_and_checkpoint_folder_from_the_pods_environment(tmp_path, monkeypatch):
    """On a cluster the pipeline sets KFP_RUN_ID (from the pod's label) and CRYPSON_CHECKPOINTS (the PVC's mount)
    instead of passing them as inputs, which would be part of the task's cache key."""
    seen = {}

    def stage(stage, config, root, params, **options):  # crypson.stages.runner.run_stage, recorded
        seen[stage] = (options["checkpoints"], os.environ.get("KFP_RUN_ID"), os.environ.get("CRYPSON_EXECUTION_ID"))
        if options["checkpoints"] is not None:  # training writes there, and deletes its file when it finishes
            options["checkpoints"].mkdir(parents=True)
        result = runtime.RESULTS[stage](Layout(root))
        result.parent.mkdir(parents=True, exist_ok=True)
        result.write_text("{}")

    monkeypatch.setattr(runtime, "run_stage_in", stage)
    monkeypatch.setenv("KFP_RUN_ID", "run-7f3")
    monkeypatch.delenv("CRYPSON_EXECUTION_ID", raising=False)
    monkeypatch.setenv("CRYPSON_CHECKPOINTS", str(tmp_path / "pvc"))
    params = json.dumps({"tracking": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                                      "artifact_dir": str(tmp_path / "mlartifacts")}})
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "manifest.json").write_text("{}")
    runtime.run_stage("train_vae", params, {"prepared": str(prepared)}, {})
    runtime.run_stage("evaluate", params, {"prepared": str(prepared)}, {})
    expected = runtime.task_checkpoints(str(tmp_path / "pvc"), "train_vae", params, {"prepared": str(prepared)})
    assert seen["train_vae"] == (expected, "run-7f3", "run-7f3")
    assert seen["evaluate"] == (None, "run-7f3", "run-7f3")  # only training keeps checkpoints
    assert not expected.exists() and (tmp_path / "pvc").is_dir()  # the finished task's empty folder went
    assert "CRYPSON_EXECUTION_ID" not in os.environ  # set for the stage only
