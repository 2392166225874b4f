"""`crypson stack up|down|status|env|dvc-remote`: thin callers of crypson.stack."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from crypson.stack.services import configure_dvc_remote, down, status, up
from crypson.stack.settings import HOST, SERVICES, StackConfig, StackError, client_env, config_from_env


app = typer.Typer(help="Local PostgreSQL + S3 (SeaweedFS) + MLflow server on 127.0.0.1.", no_args_is_help=True)
ServicesArg = Annotated[list[str] | None, typer.Argument(help=f"services ({', '.join(SERVICES)}); default all")]


def _config() -> StackConfig:
    return config_from_env(os.environ, Path.cwd() / ".stack")


def _guarded(action):
    try:
        return action()
    except StackError as error:
        typer.echo(f"crypson stack: error: {error}", err=True)
        raise typer.Exit(code=2) from None


@app.command("up")
def up_command(services: ServicesArg = None) -> None:
    """Start the stack (idempotent). Data and credentials live in CRYPSON_STACK_DIR (.stack/)."""
    config = _guarded(_config)
    _guarded(lambda: up(config, tuple(services) if services else None))
    _print_status(config)
    typer.echo(f"# eval \"$(crypson stack env)\" to point the pipeline at it (data in {config.root})")


@app.command("down")
def down_command(services: ServicesArg = None) -> None:
    """Stop the stack's services (idempotent); data stays for the next `up`."""
    config = _guarded(_config)
    stopped = _guarded(lambda: down(config, tuple(services) if services else None))
    typer.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


def _print_status(config: StackConfig) -> dict[str, bool]:
    state = status(config)
    for service, running in state.items():
        typer.echo(f"{service:9} {'up' if running else 'down':5} {HOST}:{config.port(service)}")
    return state


@app.command("status")
def status_command() -> None:
    """Print each service up/down; exit 1 unless all are up."""
    if not all(_print_status(_guarded(_config)).values()):
        raise typer.Exit(code=1)


@app.command("env")
def env_command() -> None:
    """Print the export lines for a shell: eval "$(crypson stack env)"."""
    config = _guarded(_config)
    for key, value in _guarded(lambda: client_env(config)).items():
        typer.echo(f"export {key}={value}")


@app.command("dvc-remote")
def dvc_remote_command(
    local_credentials: Annotated[bool, typer.Option(help="also write the keys to .dvc/config.local")] = False,
) -> None:
    """Make the stack's bucket (s3://<bucket>/dvc) the default DVC remote of this repository."""
    config = _guarded(_config)
    _guarded(lambda: configure_dvc_remote(config, Path.cwd(), local_credentials=local_credentials))
    typer.echo(f"dvc remote 'stack': {config.dvc_remote_url} at {config.s3_endpoint}")
