"""Every shipped preset runs end to end, on a few batches a stage, so none of them can rot.

The presets name the real EMNIST split and full schedules; here they run on a small offline glyph set
with one short epoch a model, which exercises exactly their architectures and losses.
"""

import json

import mlflow
import pytest
import torch
import yaml

from crypson.config import deep_merge, parse_config
from crypson.stages import runner
from tests.e2e.helpers import REPO

pytestmark = pytest.mark.e2e

# A few batches a stage; the presets' models, losses and widths stay as they are.
FEW_BATCHES = {
    "data": {"source": "glyphs", "glyphs": {"train_per_class": 12, "test_per_class": 4}},
    "cgan": {"epochs": 1, "batch_size": 32, "max_train_batches": 2, "samples_per_class": 1},
    "vae": {"epochs": 1, "batch_size": 32, "max_train_batches": 2},
    "classifier": {"epochs": 1, "batch_size": 32, "max_train_batches": 2},
    "evaluate": {"generated_per_class": 2, "reference_epochs": 1, "grid_per_class": 1, "tsne_points": 100,
                 "truncation_levels": [None, 1.0]},
    "attack": {"train_per_class": 3, "test_per_class": 2, "sender_trials_per_class": 5, "restarts": 1, "epochs": 1,
               "timestep_grid": 4, "noise_levels": [0.0]},
    "promote": {"min_accuracy_real": 0.0, "min_accuracy_generated": 0.0, "min_psnr_db": 0.0,
                "min_class_consistency": None, "max_attacker_advantage": None, "max_sender_misread_chance": None},
}


@pytest.fixture
def in_folder(tmp_path, monkeypatch):
    """Run stages in this process from an empty folder; MLflow's global state restored afterwards."""
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "CRYPSON_EXECUTION_ID", "KFP_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path
    mlflow.set_tracking_uri(None)


@pytest.mark.parametrize("preset", ["report", "quality"])
def test_preset_runs_end_to_end_on_a_few_batches(preset, in_folder):
    tmp_path = in_folder
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    overrides = yaml.safe_load((REPO / "presets" / f"{preset}.yaml").read_text())
    merged = deep_merge(deep_merge(params, overrides), FEW_BATCHES)
    # The classifier's calibration draws a few images a class where the preset draws any (report: none).
    classifier = merged["classifier"]
    classifier["calibration_per_class"] = min(classifier.get("calibration_per_class", 0), 2)
    config = parse_config(merged)  # the preset validates
    text = yaml.safe_dump(merged, sort_keys=False).encode()
    (tmp_path / "params.yaml").write_bytes(text)
    # Every stage, in dvc.yaml's order, through the runner that `crypson stage` (and so `dvc repro`) calls;
    # in this process, since the dvc.yaml wiring is what tests/e2e/test_pipeline.py checks.
    stages = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    assert stages == list(runner.STAGES)
    for stage in stages:
        runner.run_stage(stage, config, tmp_path, text, progress=False)
    registrations = {kind: json.loads((tmp_path / "models" / kind / "registration.json").read_text())
                     for kind in ("cgan", "vae", "classifier")}
    assert {r["name"] for r in registrations.values()} == {"crypson-cgan", "crypson-vae", "crypson-classifier"}
    evaluation = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    assert 0 <= evaluation["reference_accuracy_real"] <= 1
    assert "class_consistency_truncation_1" in evaluation and "class_consistency_untruncated" in evaluation
    # The sender's check pools the attackers' 3 + 2 characters a class with ceil(5 / k) more, k images each.
    attacks, k = json.loads((tmp_path / "metrics" / "attacks.json").read_text()), config.cipher.candidates
    assert attacks["sender_candidates"] == k
    assert attacks["sender_single_image_trials_min"] == (3 + 2 + -(-5 // k)) * k
    generator = torch.load(tmp_path / "models" / "cgan" / "generator.pt", weights_only=True)
    # What the preset asked for is what was built and saved.
    assert generator["hparams"]["width"] == config.cgan.generator_width
    assert generator["hparams"]["truncation"] == config.cgan.truncation
    discriminator = torch.load(tmp_path / "models" / "cgan" / "discriminator.pt", weights_only=True)
    assert discriminator["hparams"]["architecture"] == config.cgan.discriminator
    vae = torch.load(tmp_path / "models" / "vae" / "vae.pt", weights_only=True)
    assert vae["hparams"]["decoder_output"] == config.vae.decoder_output
    assert vae["hparams"]["num_classes"] == (47 if config.vae.class_weight > 0 else 0)
