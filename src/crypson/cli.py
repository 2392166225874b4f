"""The `crypson` command line: thin callers of crypson.stages (dvc.yaml runs these)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from crypson import stack as stack_cli
from crypson.cipher import cli as cipher_cli
from crypson.config import ConfigError, deep_merge, load_config, parse_config
from crypson.files import atomic_write_bytes
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


def run_stage(stage: str, params: Path, root: Path, quiet: bool = False) -> None:
    """Validate the params file and run one stage (crypson.stages.runner); a stage's expected error
    becomes one line on stderr and exit code 2."""
    from crypson.stages import runner

    runner.configure_logging()
    try:
        config = load_config(params)
        runner.run_stage(stage, config, root, params.read_bytes(), progress=not quiet)
    except runner.stage_errors() as error:
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
