import json
import math

import pytest
from mlflow import MlflowClient
import torch

from crypson import model_files
from crypson.config import parse_config
from crypson.stages.promotion import check_gates


def test_gates_report_value_threshold_and_margin():
    config = parse_config({"promote": {"min_accuracy_real": 0.8, "min_accuracy_generated": 0.5, "min_psnr_db": 20,
                                       "max_attacker_advantage": 0.02, "min_class_consistency": None}})
    gates = check_gates(config, {"accuracy_real": 0.85, "accuracy_generated": 0.5, "psnr_db": 18.5,
                                 "default_scheme_max_advantage_ci_low": 0.05})
    by_metric = {gate["metric"]: gate for gate in gates}
    assert by_metric["accuracy_real"]["passed"] and by_metric["accuracy_real"]["margin"] == pytest.approx(0.05)
    assert by_metric["accuracy_generated"]["passed"]  # equal to the threshold passes
    assert not by_metric["psnr_db"]["passed"] and by_metric["psnr_db"]["margin"] == pytest.approx(-1.5)
    advantage = by_metric["default_scheme_max_advantage_ci_low"]
    assert not advantage["passed"] and advantage["margin"] == pytest.approx(-0.03)  # an upper bound


def test_unmeasured_advantage_fails_its_gate_and_null_disables_it():
    results = {"accuracy_real": 1.0, "accuracy_generated": 1.0, "psnr_db": 30.0, "default_scheme_max_advantage_ci_low": None}
    gates = check_gates(parse_config({"promote": {"min_class_consistency": None, "max_sender_misread_chance": None}}),
                        results)
    assert [g["metric"] for g in gates if not g["passed"]] == ["default_scheme_max_advantage_ci_low"]
    gates = check_gates(parse_config({"promote": {"max_attacker_advantage": None, "min_class_consistency": None,
                                                  "max_sender_misread_chance": None}}), results)
    assert all(g["passed"] for g in gates) and len(gates) == 3


def test_class_consistency_gate_when_set():
    results = {"accuracy_real": 1.0, "accuracy_generated": 1.0, "psnr_db": 30.0, "class_consistency": 0.9}
    config = parse_config({"promote": {"max_attacker_advantage": None, "min_class_consistency": 0.95,
                                       "max_sender_misread_chance": None}})
    failed = [g for g in check_gates(config, results) if not g["passed"]]
    assert [g["metric"] for g in failed] == ["class_consistency"] and failed[0]["margin"] == pytest.approx(-0.05)


def test_the_sender_gate_reads_the_misread_chance_at_its_own_scale():
    results = {"accuracy_real": 1.0, "accuracy_generated": 1.0, "psnr_db": 30.0}
    config = parse_config({"promote": {"max_attacker_advantage": None, "min_class_consistency": None}})

    def sender_gate(chance):
        (gate,) = [g for g in check_gates(config, {**results, "sender_misread_chance": chance})
                   if g["metric"] == "sender_misread_chance"]
        return gate

    assert config.promote.max_sender_misread_chance == 1e-6  # on by default
    passed = sender_gate(1.9e-7)
    assert passed["passed"] and passed["kind"] == "max" and passed["margin"] == pytest.approx(8.1e-7)
    # 2e-7 over the target: a margin rounded to six decimals would read 0.0; it fails and says by how much
    failed = sender_gate(1.2e-6)
    assert not failed["passed"] and failed["margin"] == pytest.approx(-2e-7)
    assert not sender_gate(None)["passed"]  # not measured: fails


def test_the_advantage_gate_reads_the_largest_lower_bound():
    from crypson.evaluate.attacks import AttackResult
    from crypson.stages.attack import advantage_lower_bound

    chance, receiver = 0.1, 0.9
    # (ci_low - chance) / (receiver - chance): 0.0, 0.125 and -0.0625; the gate reads the largest.
    results = [AttackResult("keyed-modular", name, 0.2, low, 0.3, chance, receiver, 0.5, 100)
               for name, low in (("a", 0.1), ("b", 0.2), ("c", 0.05))]
    assert advantage_lower_bound(results) == pytest.approx(0.125)
    # Not the point estimate (0.5 each), nor the upper bound.
    assert advantage_lower_bound(results[:1]) == pytest.approx(0.0)
    unmeasurable = AttackResult("keyed-modular", "d", 0.2, 0.2, 0.3, chance, chance, float("nan"), 100)
    assert math.isnan(advantage_lower_bound(results + [unmeasurable]))
    assert math.isnan(advantage_lower_bound([]))


def test_the_sender_check_pools_every_draw_per_class():
    from crypson.cipher.codec import Checked
    from crypson.stages.attack import _sender_check

    def draw(labels, reads):  # k = 2 candidates a character; `reads` per character, as (bool, bool)
        read = torch.tensor(reads)
        margin = torch.where(read.any(1), 1.0, -1.0)  # > 0 exactly when some candidate was read back
        return torch.tensor(labels), Checked(torch.zeros(len(labels), 8), margin, read)

    first = draw([0, 1], [(True, True), (False, False)])
    second = draw([1, 1, 0], [(True, False), (True, True), (False, True)])
    check = _sender_check(("A", "B"), [first, second])
    assert check.candidates == 2 and check.classes == ("A", "B")
    assert check.trials == (4, 6)  # A: 2 characters, B: 3, two candidates each
    assert check.reads == (3, 3)  # A: 2 + 1; B: 0 + 1 + 2
    assert check.no_correct_fraction == pytest.approx(1 / 5)  # B's first character only


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """Three registered models (two versions each) in a real embedded store, and a run's folder."""
    import mlflow

    from crypson import tracking
    from crypson.models.vae import VAE
    from crypson.layout import Layout

    monkeypatch.chdir(tmp_path)
    experiment = tracking.configure(f"sqlite:///{tmp_path / 'mlflow.db'}", "test", tmp_path / "artifacts")
    tags = {"git_commit": "abc", "data_version": "d" * 64}
    context = tracking.TrackingContext(experiment, tracking.execution_run(experiment, "x", "pipeline", tags), tags)
    vae = VAE(latent_dim=2, channels=(2, 2, 4, 4)).eval()
    layout = Layout(tmp_path / "run")
    weights = tmp_path / "vae.pt"
    model_files.save_model(weights, "vae", {"latent_dim": 2, "channels": [2, 2, 4, 4]}, vae.state_dict(), ("A",))
    with tracking.stage_run(context, "train_vae"):
        uri = tracking.log_network(vae, weights, "vae", "vae", (torch.rand(1, 1, 32, 32),),
                                   lambda m, p: m.encode_mean(p[0])).model_uri
        for kind, name in tracking.MODEL_NAMES.items():
            tracking.register_version(uri, name, {}, "v")
            version = tracking.register_version(uri, name, {}, "v")
            layout.model_dir(kind).mkdir(parents=True)
            (layout.model_dir(kind) / "registration.json").write_text(json.dumps({"name": name, "version": version}))
    tracking.set_champion({name: "1" for name in tracking.MODEL_NAMES.values()})
    layout.prepared.mkdir(parents=True)
    (layout.prepared / "manifest.json").write_text(json.dumps({
        "source": "glyphs", "split": "balanced", "data_version": "d" * 64, "num_classes": 47,
        "counts": {"train": 12690, "val": 1410, "test": 2820}}))
    yield layout, context
    mlflow.set_tracking_uri(None)


def _write_metrics(layout, advantage_low: float | None) -> None:
    layout.metrics("evaluate").parent.mkdir(parents=True, exist_ok=True)
    layout.metrics("evaluate").write_text(json.dumps({"accuracy_real": 0.97, "accuracy_generated": 1.0,
                                                      "psnr_db": 22.0, "class_consistency": 0.98}))
    layout.metrics("attacks").write_text(json.dumps({"default_scheme_max_advantage_ci_low": advantage_low,
                                                     "sender_misread_chance": 1.9e-7}))


@pytest.mark.parametrize("advantage_low, promoted", [(0.0, True), (0.03, False), (None, False)])
def test_promote_moves_champion_only_when_every_gate_passes(registered, advantage_low, promoted):
    from crypson import tracking
    from crypson.stages.promotion import promote

    layout, context = registered
    _write_metrics(layout, advantage_low)
    config = parse_config({"promote": {"min_accuracy_real": 0.95, "min_accuracy_generated": 0.97,
                                       "min_psnr_db": 20.0, "min_class_consistency": 0.95,
                                       "max_attacker_advantage": 0.02}})
    decision = promote(config, layout, context)
    names = list(tracking.MODEL_NAMES.values())
    expected = {name: "2" if promoted else "1" for name in names}
    assert decision["promoted"] is promoted and decision["champion_after"] == expected
    assert tracking.champion_versions(names) == expected
    assert json.loads(layout.promotion_report.read_text())["promoted"] is promoted
    # each scored version's description is its model card, with the figures and the gates' verdict
    card = MlflowClient().get_model_version("crypson-vae", "2").description
    assert card.startswith("# crypson-vae v2\n") and "2820" in card and "| receiver accuracy, real test images | 0.970 (0." in card
    assert ("advantage_ci_low not measured" in card) is (advantage_low is None)
    assert MlflowClient().get_model_version("crypson-vae", "2").tags["gates"] == ("passed" if promoted else "failed")
    if not promoted:
        failed = [g["metric"] for g in decision["gates"] if not g["passed"]]
        assert failed == ["default_scheme_max_advantage_ci_low"]


@pytest.mark.parametrize("kind, hparams", [
    ("generator", {"num_classes": 3, "noise_dim": 4, "width": 2, "conditioning": "concat", "label_dim": 3}),
    ("discriminator", {"num_classes": 3, "embed_dim": 4, "hidden": [8]}),
    ("discriminator", {"num_classes": 3, "architecture": "conv", "width": 2, "temperature": 0.5}),
    ("generator", {"num_classes": 3, "noise_dim": 4, "width": 2, "conditioning": "concat", "label_dim": 3,
                   "truncation": 0.5}),
    ("vae", {"latent_dim": 2, "channels": [2, 2, 4, 4]}),
    ("vae", {"latent_dim": 2, "channels": [2, 2, 4, 4], "decoder_output": "direct", "num_classes": 3}),
    ("classifier", {"latent_dim": 2, "channels": [2, 2, 4, 4], "num_classes": 3, "hidden": 4, "dropout": 0.1}),
])
def test_model_files_round_trip(tmp_path, kind, hparams):
    module = model_files.build(kind, hparams)
    model_files.save_model(tmp_path / "m.pt", kind, hparams, module.state_dict(), ("a", "b", "c"))
    loaded, classes = model_files.load_model(tmp_path / "m.pt", kind)
    assert classes == ("a", "b", "c") and not loaded.training
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_loading_the_wrong_kind_is_a_clear_error(tmp_path):
    hparams = {"latent_dim": 2, "channels": [2, 2, 4, 4]}
    model_files.save_model(tmp_path / "vae.pt", "vae", hparams, model_files.build("vae", hparams).state_dict(), ("a",))
    with pytest.raises(ValueError, match="holds a 'vae' model.*expected 'generator'"):
        model_files.load_model(tmp_path / "vae.pt", "generator")
    with pytest.raises(FileNotFoundError, match="run its training stage"):
        model_files.load_model(tmp_path / "missing.pt", "vae")


def test_versions_logged_before_the_rename_still_load():
    """Every version registered before crypson.artifacts became crypson.model_files stores a
    registry_network.py that does `from crypson import artifacts`: that module must keep working."""
    from crypson import artifacts, model_files

    for name in artifacts.__all__:
        assert getattr(artifacts, name) is getattr(model_files, name)
