"""The promote stage: the gates in params.yaml decide whether the registered version set becomes `champion`.

It reads the evaluate and attack stages' metrics files and the registry records, and needs neither torch
nor the networks (a stage process that only imports MLflow).
"""

from __future__ import annotations

import json
import logging
import math

import mlflow

from crypson import tracking
from crypson.config import Config
from crypson.data.prepare import load_manifest
from crypson.evaluate.model_card import model_card
from crypson.files import atomic_write_json
from crypson.layout import Layout

log = logging.getLogger(__name__)
# Copied onto the execution's parent run when promote ends it: the runs table answers "which execution
# shipped, with what figures" without a click.
HEADLINE_METRICS = ("accuracy_real", "accuracy_generated", "psnr_db", "class_consistency", "reference_accuracy_real",
                    "frechet_distance", "default_scheme_max_advantage", "default_scheme_max_advantage_ci_low",
                    "sender_candidates")
# What each registered network does in the cipher: the first line of its model card.
MODEL_ROLES = {"cgan": "The conditional GAN draws a fresh 32x32 image of a character from a class index and noise.",
               "vae": "The VAE encodes a character image to an 8-d latent (what is masked and sent) and decodes it back.",
               "classifier": "The classifier reads a received latent back as a character, through the frozen VAE decoder."}


def check_gates(config: Config, results: dict[str, float]) -> list[dict]:
    """Each gate with its value, threshold and margin (positive = room to spare).

    Quality gates pass when value >= threshold; the attacker-advantage gate when the lower 95% bound
    of the best attacker's advantage is <= threshold; the sender's gate when the misread chance per
    character at cipher.candidates (the worst class's Wilson-bounded single-image error ** k) is <=
    threshold. A value that could not be measured (NaN or missing) fails its gate.
    """
    gates = config.promote
    checks = [("accuracy_real", gates.min_accuracy_real, "min"),
              ("accuracy_generated", gates.min_accuracy_generated, "min"),
              ("psnr_db", gates.min_psnr_db, "min")]
    if gates.min_class_consistency is not None:
        checks.append(("class_consistency", gates.min_class_consistency, "min"))
    if gates.max_attacker_advantage is not None:
        checks.append(("default_scheme_max_advantage_ci_low", gates.max_attacker_advantage, "max"))
    if gates.max_sender_misread_chance is not None:
        checks.append(("sender_misread_chance", gates.max_sender_misread_chance, "max"))
    report = []
    for metric, threshold, kind in checks:
        value = results.get(metric)
        value = math.nan if value is None else float(value)
        margin = value - threshold if kind == "min" else threshold - value
        # six significant digits, not decimals: the misread gate's margins are of the order of 1e-7
        report.append({"metric": metric, "value": value, "threshold": threshold, "kind": kind,
                       "margin": float(f"{margin:.6g}"), "passed": bool(margin >= 0)})
    return report


def promote(config: Config, layout: Layout, context: tracking.TrackingContext) -> dict:
    """Move `champion` to this execution's three versions if, and only if, every gate passes.

    A failing gate is reported with its shortfall, `champion` stays where it was, and the stage
    still succeeds: not promoting is a valid outcome of a pipeline run.
    """
    results = json.loads(layout.metrics("evaluate").read_text())
    results.update(json.loads(layout.metrics("attacks").read_text()))
    versions = {r["name"]: r["version"] for r in layout.registrations().values()}
    gates = check_gates(config, results)
    passed = all(gate["passed"] for gate in gates)
    before = tracking.champion_versions(list(versions))
    with tracking.stage_run(context, "promote"):
        mlflow.log_dict({"gates": gates}, "gates.json")
        mlflow.log_metrics({f"gate_margin.{g['metric']}": g["margin"] for g in gates if not math.isnan(g["margin"])})
        mlflow.set_tags({"promoted": str(passed).lower(), **{f"version.{n}": v for n, v in versions.items()}})
        tracking.tag_versions(versions, {"gates": "passed" if passed else "failed"})
        manifest = load_manifest(layout.prepared)
        for kind, registration in layout.registrations().items():
            card = model_card(registration["name"], registration["version"], MODEL_ROLES[kind], manifest,
                                     results, results, gates, config.cipher.scheme,
                                     config.evaluate.generated_per_class * manifest["num_classes"])
            tracking.describe_version(registration["name"], registration["version"], card)
            mlflow.log_text(card, f"model_cards/{registration['name']}-v{registration['version']}.md")
        if passed:
            tracking.set_champion(versions)
    headline = {key: results.get(key) for key in HEADLINE_METRICS} | {"promoted": float(passed)}
    tracking.end_execution(context.parent_run_id, "FINISHED", headline,
                           {"promoted": str(passed).lower(), **{f"version.{n}": v for n, v in versions.items()}})
    log.info("MLflow: %s", tracking.ui_link(mlflow.get_tracking_uri(), context.experiment_id, context.parent_run_id))
    failed = [g for g in gates if not g["passed"]]
    for gate in failed:
        log.warning("gate failed: %s = %.4g is %s %.4g by %.4g; champion stays at %s", gate["metric"],
                    gate["value"], "below" if gate["kind"] == "min" else "above", gate["threshold"],
                    -gate["margin"], before)
    decision = {"promoted": passed, "gates": gates, "candidate_versions": versions,
                "champion_before": before, "champion_after": versions if passed else before}
    atomic_write_json(layout.promotion_report, decision)
    return decision
