"""The `crypson` command line: thin callers of crypson.stages (dvc.yaml runs these)."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from crypson import stack as stack_cli
from crypson import tracking
from crypson.cipher import cli as cipher_cli
from crypson.config import Config, ConfigError, deep_merge, load_config, parse_config
from crypson.io import atomic_write_bytes
from crypson.kfp.cli import app as pipeline_app

app = typer.Typer(help="Crypson: latent-space text encryption as an MLOps pipeline.", no_args_is_help=True)
stage_app = typer.Typer(help="Run one pipeline stage (what dvc.yaml calls).", no_args_is_help=True)
app.add_typer(stage_app, name="stage")
app.add_typer(pipeline_app, name="pipeline")
cipher_cli.register(app)
app.add_typer(stack_cli.app, name="stack")

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params file")]
RootOption = Annotated[Path, typer.Option("--root", help="folder the stage outputs live under")]
QuietOption = Annotated[bool, typer.Option("--quiet", help="no progress bars")]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def git_commit() -> str:
    """HEAD, with '-dirty' when tracked files differ; CRYPSON_GIT_COMMIT wins (containers have no .git)."""
    if os.environ.get("CRYPSON_GIT_COMMIT"):
        return os.environ["CRYPSON_GIT_COMMIT"]
    head = _git("rev-parse", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)dvc.lock")
    return f"{head}-dirty" if dirty else head


def execution_key(params_path: Path) -> str:
    """What groups stage runs into one pipeline execution in MLflow.

    CRYPSON_EXECUTION_ID (set by the Kubeflow components to the KFP run id) wins. Under
    `dvc repro` each stage is its own process, so the key is the state that the execution
    runs: the commit, the uncommitted changes to tracked files and the params.
    """
    if os.environ.get("CRYPSON_EXECUTION_ID"):
        return os.environ["CRYPSON_EXECUTION_ID"]
    digest = hashlib.sha256(git_commit().encode())
    digest.update(_git("diff", "HEAD", "--", ".", ":(exclude)dvc.lock").encode())
    digest.update(params_path.read_bytes())
    return digest.hexdigest()[:16]


def dvc_data_md5(root: Path) -> str:
    """The DVC hash of data/raw from dvc.lock (empty outside a DVC repo)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return ""
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for out in stages.get("ingest", {}).get("outs", []):
        if out.get("path") == "data/raw":
            return str(out.get("md5", ""))
    return ""


def _tracking_context(config: Config, params: Path, root: Path) -> tracking.TrackingContext:
    from crypson.data.prepare import load_prepared

    uri = os.environ.get("MLFLOW_TRACKING_URI") or config.tracking.tracking_uri
    experiment_id = tracking.configure(uri, config.tracking.experiment, root / config.tracking.artifact_dir)
    manifest = load_prepared(root / "data" / "prepared").manifest
    tags = {"git_commit": git_commit(), "data_version": manifest["data_version"],
            "dvc_data_md5": dvc_data_md5(root), "data_source": manifest["source"]}
    if os.environ.get("KFP_RUN_ID"):
        tags["kfp_run_id"] = os.environ["KFP_RUN_ID"]
    key = execution_key(params)
    parent = tracking.execution_run(experiment_id, key, f"pipeline {key[:8]}", tags)
    return tracking.TrackingContext(experiment_id, parent, tags)


def run_stage(stage: str, params: Path, root: Path, quiet: bool = False) -> None:
    """Run one pipeline stage as `crypson stage ...` does (config, logging, MLflow context): the one
    entry that dvc.yaml (through the CLI) and the Kubeflow components (crypson.kfp.runtime) share.

    Raises:
        typer.Exit: the stage failed; the reason is already on stderr.
    """
    from crypson import stages
    from crypson.train import distributed

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "great_expectations", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    tracking.disable_telemetry()
    try:
        config = load_config(params)
        layout = stages.Layout(root)
        if stage in ("ingest", "prepare", "validate"):
            getattr(stages, stage)(config, layout)
            return
        if stage.startswith("train_"):
            # Under torchrun only rank 0 tracks: other ranks would race it to create the store and runs.
            context = _tracking_context(config, params, root) if distributed.is_main_process() else None
            getattr(stages, stage)(config, layout, context, progress=not quiet)
            return
        getattr(stages, stage)(config, layout, _tracking_context(config, params, root))
    except (ConfigError, FileNotFoundError, stages.DataValidationError, ValueError,
            tracking.TrackingUnavailableError) as error:
        typer.echo(f"crypson {stage}: error: {error}", err=True)
        raise typer.Exit(code=2) from None


@stage_app.command("ingest")
def ingest_command(params: ParamsOption = Path("params.yaml"), root: RootOption = Path(".")) -> None:
    """Write the raw EMNIST-format files (data.source: emnist or glyphs) to data/raw."""
    run_stage("ingest", params, root)


@stage_app.command("prepare")
def prepare_command(params: ParamsOption = Path("params.yaml"), root: RootOption = Path(".")) -> None:
    """Pad to 32x32, split train/val/test, write the metadata table."""
    run_stage("prepare", params, root)


@stage_app.command("validate")
def validate_command(params: ParamsOption = Path("params.yaml"), root: RootOption = Path(".")) -> None:
    """Great-expectations suite on the metadata table; fails on any violated expectation."""
    run_stage("validate", params, root)


@stage_app.command("train-cgan")
def train_cgan_command(params: ParamsOption = Path("params.yaml"), root: RootOption = Path("."),
                       quiet: QuietOption = False) -> None:
    """Train and register the conditional GAN."""
    run_stage("train_cgan", params, root, quiet)


@stage_app.command("train-vae")
def train_vae_command(params: ParamsOption = Path("params.yaml"), root: RootOption = Path("."),
                      quiet: QuietOption = False) -> None:
    """Train and register the VAE."""
    run_stage("train_vae", params, root, quiet)


@stage_app.command("train-classifier")
def train_classifier_command(params: ParamsOption = Path("params.yaml"), root: RootOption = Path("."),
                             quiet: QuietOption = False) -> None:
    """Train and register the latent classifier (needs the trained VAE)."""
    run_stage("train_classifier", params, root, quiet)


@stage_app.command("evaluate")
def evaluate_command(params: ParamsOption = Path("params.yaml"), root: RootOption = Path(".")) -> None:
    """Accuracy, confusion matrices, PSNR/SSIM: DVC metrics and plots, MLflow run."""
    run_stage("evaluate", params, root)


@stage_app.command("attack")
def attack_command(params: ParamsOption = Path("params.yaml"), root: RootOption = Path(".")) -> None:
    """Attack suite: every attacker against every mask scheme; advantage per scheme as DVC metrics."""
    run_stage("attack", params, root)


@stage_app.command("promote")
def promote_command(params: ParamsOption = Path("params.yaml"), root: RootOption = Path(".")) -> None:
    """Move the `champion` alias to this run's models if every gate passes."""
    run_stage("promote", params, root)


@app.command("config")
def config_command(params: ParamsOption = Path("params.yaml")) -> None:
    """Validate a params file and print the resolved settings."""
    try:
        config = load_config(params)
    except ConfigError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(yaml.safe_dump(config.model_dump(by_alias=True, mode="json"), sort_keys=False))


@app.command("preset")
def preset_command(
    name: Annotated[str, typer.Argument(help="a file in presets/ (tiny, report) or a path")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Apply a partial preset to the params file (rewritten without its comments; git restores them)."""
    preset = Path(name) if Path(name).suffix else Path("presets") / f"{name}.yaml"
    try:
        if not preset.is_file():
            raise ConfigError(f"no preset {name!r}: {preset} does not exist (shipped: tiny, report)")
        merged = deep_merge(yaml.safe_load(params.read_text()) or {}, yaml.safe_load(preset.read_text()) or {})
        parse_config(merged, source=f"{params} + {preset}")
    except ConfigError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
    atomic_write_bytes(params, yaml.safe_dump(merged, sort_keys=False).encode())
    typer.echo(f"{params}: applied {preset}")


def main() -> None:  # pragma: no cover - `python -m crypson`
    app(prog_name="crypson", args=sys.argv[1:])
