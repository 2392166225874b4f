"""`crypson pipeline`: compile the Kubeflow pipeline, run it locally, submit it to a cluster.

kfp is imported inside the commands only: it is an optional dependency (the `kubeflow` extra),
and the other `crypson` commands start without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from crypson.config import ConfigError, parse_config
from crypson.files import atomic_write_bytes
from crypson.provenance import git, git_commit

app = typer.Typer(help="The Kubeflow pipeline: compile, run locally (kfp.local), submit to a KFP server.",
                  no_args_is_help=True)

RepoOption = Annotated[Path, typer.Option("--repo", help="repository root (holds pipelines/, components/)")]
ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params file: the pipeline's defaults")]
PresetOption = Annotated[list[str], typer.Option(
    "--preset", help="partial params merged on top (presets/NAME.yaml or a path); repeatable")]
EXIT_ERRORS = (ConfigError, FileNotFoundError, ValueError, RuntimeError, ImportError)


def _fail(command: str, error: Exception) -> typer.Exit:
    message = str(error)
    if isinstance(error, ImportError) and "kfp" in message:
        message = f"{message}: install the kubeflow extra (pip install -e '.[kubeflow]')"
    typer.echo(f"crypson pipeline {command}: error: {message}", err=True)
    return typer.Exit(code=2)


def _preset_paths(repo: Path, presets: list[str]) -> list[Path]:
    return [Path(name) if Path(name).suffix else repo / "presets" / f"{name}.yaml" for name in presets]


@app.command("compile")
def compile_command(
    repo: RepoOption = Path("."),
    params: ParamsOption = Path("params.yaml"),
    output: Annotated[Path, typer.Option("--output", "-o", help="spec file to write")] = Path(
        "pipelines/crypson_pipeline.yaml"),
    image: Annotated[str, typer.Option("--image", help="task image (default: $CRYPSON_IMAGE, else the "
                                                        "pipeline's DEFAULT_IMAGE)")] = "",
    check: Annotated[bool, typer.Option("--check", help="write nothing; fail if OUTPUT is out of date")] = False,
) -> None:
    """Compile pipelines/crypson_pipeline.py to its YAML spec, params.yaml as the defaults."""
    from crypson.kfp.project import compile_spec

    try:
        spec = compile_spec(repo, repo / params, image or None)
    except EXIT_ERRORS as error:
        raise _fail("compile", error) from None
    target = repo / output
    if check:
        if not target.is_file() or target.read_text() != spec:
            typer.echo(f"{target} is out of date: run `crypson pipeline compile`", err=True)
            raise typer.Exit(code=1)
        typer.echo(f"{target} is up to date")
        return
    atomic_write_bytes(target, spec.encode())
    typer.echo(f"wrote {target}")


@app.command("run")
def run_command(
    local: Annotated[bool, typer.Option("--local", help="run on this machine with kfp.local")] = False,
    repo: RepoOption = Path("."),
    params: ParamsOption = Path("params.yaml"),
    preset: PresetOption = [],  # noqa: B006 - typer reads the default, never mutates it
    pipeline_root: Annotated[Path, typer.Option("--pipeline-root", help="where kfp.local keeps task outputs")] = Path(
        "kfp_local_outputs"),
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="reuse the outputs of unchanged tasks from earlier "
                                        "runs in the pipeline root (KFP's caching)")] = True,
) -> None:
    """Run the pipeline locally (kfp.local, subprocess runner, this Python environment).

    MLflow: MLFLOW_TRACKING_URI if set, else params' tracking settings with their paths made
    absolute (the default: mlflow.db and mlartifacts/ in the current folder, as `dvc repro`).
    """
    from crypson.kfp.local import local_tracking_overrides, run_local
    from crypson.kfp.project import params_text

    if not local:
        typer.echo("crypson pipeline run: only --local runs here; use `crypson pipeline submit --host URL` "
                   "for a Kubeflow cluster", err=True)
        raise typer.Exit(code=2)
    try:
        presets = _preset_paths(repo, preset)
        merged = parse_config(yaml.safe_load(params_text(repo / params, presets)) or {})
        text = params_text(repo / params, presets, local_tracking_overrides(merged, Path.cwd()))
        run_local(repo, text, pipeline_root, {"git_commit": git_commit(cwd=repo)}, cache=cache)
    except EXIT_ERRORS as error:
        raise _fail("run", error) from None
    typer.echo(f"pipeline finished; task outputs under {pipeline_root}")


@app.command("submit")
def submit_command(
    host: Annotated[str, typer.Option("--host", help="KFP API endpoint, e.g. http://localhost:8080")],
    image: Annotated[str, typer.Option("--image", help="the component image, by digest: REPOSITORY:COMMIT@sha256:"
                                                        "DIGEST (`make image-push` prints it); the spec is compiled "
                                                        "for it")] = "",
    repo: RepoOption = Path("."),
    params: ParamsOption = Path("params.yaml"),
    preset: PresetOption = [],  # noqa: B006
    experiment: Annotated[str, typer.Option("--experiment", help="KFP experiment")] = "crypson",
    pipeline_name: Annotated[str, typer.Option("--pipeline-name")] = "crypson",
    run_name: Annotated[str, typer.Option("--run-name", help="default: the version name")] = "",
    data_repo: Annotated[str, typer.Option("--data-repo", help="git URL of this repository: the run reads "
                                                               "data/raw from its DVC remote")] = "",
    data_rev: Annotated[str, typer.Option("--data-rev", help="git revision of the data (default: HEAD); "
                                                             "resolved to a commit here")] = "",
    dvc_remote: Annotated[str, typer.Option("--dvc-remote", help="DVC remote name (default: the repo's)")] = "",
    dvc_remote_url: Annotated[str, typer.Option("--dvc-remote-url", help="override the remote's URL")] = "",
    namespace: Annotated[str, typer.Option("--namespace", help="multi-user KFP: your namespace")] = "",
    allow_dirty: Annotated[bool, typer.Option("--allow-dirty", help="submit with uncommitted changes to tracked "
                                                                    "files (the image runs its own code)")] = False,
    allow_image_mismatch: Annotated[bool, typer.Option(
        "--allow-image-mismatch", help="submit an image that is not HEAD's by digest (e.g. the spec's default)")] = False,
) -> None:
    """Compile the spec for `--image`, upload it as a new pipeline version and start a run of it.

    Refused, before any request, when tracked files have uncommitted changes or the image is not HEAD's
    commit referenced by digest (crypson.kfp.submit.check_submission), unless told otherwise.
    """
    import tempfile

    from crypson.kfp.project import compile_spec, load_pipeline_module, params_text, resolve_image
    from crypson.kfp.submit import check_submission, submit, version_name

    try:
        import kfp

        image = resolve_image(image or None, load_pipeline_module(repo))
        check_submission(repo, image, allow_dirty=allow_dirty, allow_image_mismatch=allow_image_mismatch)
        text = params_text(repo / params, _preset_paths(repo, preset))
        commit = git_commit(cwd=repo)
        arguments = {"params": text, "git_commit": commit}
        if data_repo:
            rev = data_rev or "HEAD"
            resolved = git("rev-parse", "--verify", f"{rev}^{{commit}}", cwd=repo)
            if not resolved:
                raise ValueError(f"--data-rev {rev!r} is not a commit of {repo.resolve()}")
            arguments.update(data_repo_url=data_repo, data_rev=resolved, dvc_remote=dvc_remote,
                             dvc_remote_url=dvc_remote_url)
        version = version_name(pipeline_name, commit)
        client = kfp.Client(host=host, namespace=namespace or "kubeflow")
        with tempfile.TemporaryDirectory(prefix="crypson-submit-") as work:
            package = Path(work) / "crypson_pipeline.yaml"
            package.write_text(compile_spec(repo, repo / params, image))
            done = submit(client, package, pipeline_name=pipeline_name, version=version, experiment=experiment,
                          run_name=run_name or version, arguments=arguments, namespace=namespace or None)
    except EXIT_ERRORS as error:
        raise _fail("submit", error) from None
    typer.echo(f"pipeline {done.pipeline_id} version {done.version_id}: run {done.run_id} "
               f"in experiment {done.experiment_id} (image {image})")
