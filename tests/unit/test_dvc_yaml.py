"""dvc.yaml against the code and params it names: a renamed module or key must not silently drop out of a
stage's dependencies (DVC ignores nothing it is told about, but it cannot know what it is not told)."""

from pathlib import Path

import pytest
import yaml

from crypson.stages import STAGE_MODULES, runner

REPO = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())



def test_the_stages_are_the_runners_in_its_order():
    assert list(STAGES) == list(runner.STAGES) == list(STAGE_MODULES)


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_dependency_exists_and_the_stage_module_is_one(stage):
    deps = STAGES[stage]["deps"]
    missing = [path for path in deps if not (REPO / path).exists() and not path.startswith(("data/", "reports/",
                                                                                              "models/", "metrics/"))]
    assert not missing, f"{stage}: dvc.yaml names files that do not exist: {missing}"
    assert f"src/crypson/stages/{STAGE_MODULES[stage]}.py" in deps and "src/crypson/stages/layout.py" in deps
    assert STAGES[stage]["cmd"] == f"crypson stage {stage.replace('_', '-')}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_param_key_is_in_params_yaml(stage):
    for key in STAGES[stage].get("params", []):
        node = PARAMS
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{stage}: params key {key!r} is not in params.yaml"
            node = node[part]
