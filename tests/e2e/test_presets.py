"""Every shipped preset runs end to end, on a few batches a stage, so none of them can rot.

The presets name the real EMNIST split and full schedules; here they run on a small offline glyph set
with one short epoch a model, which exercises exactly their architectures and losses.
"""

import json
import shutil

import pytest
import torch
import yaml

from crypson.config import deep_merge, parse_config
from tests.e2e.helpers import REPO, run

pytestmark = pytest.mark.e2e

# A few batches a stage; the presets' models, losses and widths stay as they are.
FEW_BATCHES = {
    "data": {"source": "glyphs", "glyphs": {"train_per_class": 12, "test_per_class": 4}},
    "cgan": {"epochs": 1, "batch_size": 32, "max_train_batches": 2, "samples_per_class": 1},
    "vae": {"epochs": 1, "batch_size": 32, "max_train_batches": 2},
    "classifier": {"epochs": 1, "batch_size": 32, "max_train_batches": 2},
    "evaluate": {"generated_per_class": 2, "reference_epochs": 1, "grid_per_class": 1, "tsne_points": 100,
                 "truncation_levels": [None, 1.0]},
    "attack": {"train_per_class": 3, "test_per_class": 2, "restarts": 1, "epochs": 1, "timestep_grid": 4,
               "noise_levels": [0.0]},
    "promote": {"min_accuracy_real": 0.0, "min_accuracy_generated": 0.0, "min_psnr_db": 0.0,
                "min_class_consistency": None, "max_attacker_advantage": None},
}


@pytest.mark.parametrize("preset", ["report", "quality"])
def test_preset_runs_end_to_end_on_a_few_batches(preset, tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    overrides = yaml.safe_load((REPO / "presets" / f"{preset}.yaml").read_text())
    merged = deep_merge(deep_merge(params, overrides), FEW_BATCHES)
    config = parse_config(merged)  # the preset validates
    for item in ("src", "dvc.yaml"):
        source = REPO / item
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, tmp_path / item)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    run(["dvc", "repro"], tmp_path)
    registrations = {kind: json.loads((tmp_path / "models" / kind / "registration.json").read_text())
                     for kind in ("cgan", "vae", "classifier")}
    assert {r["name"] for r in registrations.values()} == {"crypson-cgan", "crypson-vae", "crypson-classifier"}
    evaluation = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    assert 0 <= evaluation["reference_accuracy_real"] <= 1
    assert "class_consistency_truncation_1" in evaluation and "class_consistency_untruncated" in evaluation
    generator = torch.load(tmp_path / "models" / "cgan" / "generator.pt", weights_only=True)
    # What the preset asked for is what was built and saved.
    assert generator["hparams"]["width"] == config.cgan.generator_width
    assert generator["hparams"]["truncation"] == config.cgan.truncation
    discriminator = torch.load(tmp_path / "models" / "cgan" / "discriminator.pt", weights_only=True)
    assert discriminator["hparams"]["architecture"] == config.cgan.discriminator
    vae = torch.load(tmp_path / "models" / "vae" / "vae.pt", weights_only=True)
    assert vae["hparams"]["decoder_output"] == config.vae.decoder_output
    assert vae["hparams"]["num_classes"] == (47 if config.vae.class_weight > 0 else 0)
