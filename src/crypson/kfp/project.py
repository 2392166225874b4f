"""The repository's pipeline as the `crypson pipeline` commands see it: loaded, parametrised, compiled.

components/ and pipelines/ sit at the repository root, next to dvc.yaml (they are the Kubeflow
counterpart of it, not library code), so these helpers import them from a given repository folder.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import yaml

from crypson.config import deep_merge, parse_config
from crypson.stages.runner import DATA_STAGES, STAGES

PIPELINE_MODULE = "pipelines.crypson_pipeline"
SPEC_PATH = Path("pipelines") / "crypson_pipeline.yaml"
DVC_FILE = Path("dvc.yaml")
# What crypson.stages.runner reads around a stage that logs to MLflow (store, experiment, system metrics).
# dvc.yaml leaves it out on purpose: where a stage logs changes none of its outputs.
TRACKING_PARAMS = ("tracking",)


def load_pipeline_module(repo: Path) -> ModuleType:
    """Import pipelines/crypson_pipeline.py (and components/) from the repository at `repo`."""
    repo = Path(repo).resolve()
    if not (repo / "pipelines" / "crypson_pipeline.py").is_file():
        raise FileNotFoundError(f"no pipelines/crypson_pipeline.py under {repo}: run from the repository root "
                                "or pass --repo")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    module = importlib.import_module(PIPELINE_MODULE)
    loaded_from = Path(module.__file__).resolve().parents[1]
    if loaded_from != repo:
        raise RuntimeError(f"{PIPELINE_MODULE} was already imported from {loaded_from}, not {repo}")
    return module


def params_text(params: Path, presets: list[Path] = (), overrides: dict | None = None) -> str:
    """The pipeline's `params` argument: params.yaml (+ presets, + overrides), validated, as one line of JSON.

    One line, because kfp writes a string default into the spec's header comment verbatim, and a
    multi-line default breaks the YAML; JSON, because it is YAML too (the stages read it as their
    params file) and keeps params.yaml's `null`s, which a KFP struct default cannot hold.
    """
    params = Path(params)
    if not params.is_file():
        raise FileNotFoundError(f"params file not found: {params.resolve()}")
    raw = yaml.safe_load(params.read_text()) or {}
    for preset in presets:
        if not Path(preset).is_file():
            raise FileNotFoundError(f"preset not found: {Path(preset).resolve()} (shipped: presets/tiny.yaml, "
                                    "presets/report.yaml)")
        raw = deep_merge(raw, yaml.safe_load(Path(preset).read_text()) or {})
    raw = deep_merge(raw, overrides or {})
    parse_config(raw, source=" + ".join(str(p) for p in (params, *presets)))
    return json.dumps(raw, separators=(",", ":"))


def load_presets(repo: Path) -> dict[str, dict]:
    """name -> partial params of each presets/NAME.yaml: what the pipeline's `preset` run parameter may name."""
    return {path.stem: yaml.safe_load(path.read_text()) or {} for path in sorted((Path(repo) / "presets").glob("*.yaml"))}


def task_params(dvc_file: Path) -> dict[str, list[str]]:
    """The params keys each Kubeflow task receives: its dvc.yaml stage's `params:` list, one source for both.

    Stages that log to MLflow (all but the data stages, which run untracked on Kubeflow) add
    TRACKING_PARAMS; the gate task checks the promote stage's gates, so it gets promote's list.
    """
    dvc_file = Path(dvc_file)
    if not dvc_file.is_file():
        raise FileNotFoundError(f"no dvc.yaml at {dvc_file.resolve()}: the tasks' params lists come from it")
    stages = yaml.safe_load(dvc_file.read_text())["stages"]
    keys = {stage: list(stages[stage].get("params", [])) for stage in STAGES}
    keys["gate"] = list(keys["promote"])
    for stage in STAGES:
        if stage not in DATA_STAGES:
            keys[stage] += TRACKING_PARAMS
    return keys


def resolve_image(image: str | None, module: ModuleType) -> str:
    """--image, else $CRYPSON_IMAGE, else the pipeline's default image."""
    return image or os.environ.get(module.IMAGE_ENV) or module.DEFAULT_IMAGE


def compile_spec(repo: Path, params: Path, image: str | None = None) -> str:
    """The compiled pipeline spec (YAML text), defaults from `params`, for `image`; its training stages run as
    TrainJobs when params' distributed.nodes x gpus_per_node is above 1."""
    from kfp import compiler

    module = load_pipeline_module(repo)
    text = params_text(params)
    topology = parse_config(json.loads(text)).distributed  # > 1 process: TrainJob launchers (build_pipeline)
    pipeline = module.build_pipeline(text, task_params(Path(repo) / DVC_FILE), resolve_image(image, module),
                                     presets=load_presets(repo), nodes=topology.nodes,
                                     gpus_per_node=topology.gpus_per_node)
    with tempfile.TemporaryDirectory(prefix="crypson-compile-") as work:
        target = Path(work) / "pipeline.yaml"
        compiler.Compiler().compile(pipeline, str(target))
        return target.read_text()
