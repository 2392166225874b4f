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

PIPELINE_MODULE = "pipelines.crypson_pipeline"
SPEC_PATH = Path("pipelines") / "crypson_pipeline.yaml"


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


def resolve_image(image: str | None, module: ModuleType) -> str:
    """--image, else $CRYPSON_IMAGE, else the pipeline's default image."""
    return image or os.environ.get(module.IMAGE_ENV) or module.DEFAULT_IMAGE


def compile_spec(repo: Path, params: Path, image: str | None = None) -> str:
    """The compiled pipeline spec (YAML text), defaults from `params`, for `image`."""
    from kfp import compiler

    module = load_pipeline_module(repo)
    pipeline = module.build_pipeline(params_text(params), resolve_image(image, module))
    with tempfile.TemporaryDirectory(prefix="crypson-compile-") as work:
        target = Path(work) / "pipeline.yaml"
        compiler.Compiler().compile(pipeline, str(target))
        return target.read_text()
