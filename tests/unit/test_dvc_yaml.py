"""dvc.yaml against the code and params it names: a renamed module or key must not silently drop out of a
stage's dependencies (DVC ignores nothing it is told about, but it cannot know what it is not told).

Each stage's source files are exactly its import closure, read from the code: from the stage's function
(the other functions, constants and imports of its module that it reaches), then every crypson module
those import, at any depth and from inside functions too. Package __init__ files and the plumbing that
only starts a stage (the CLI, crypson.stages.runner) are left out. A new import the list lacks fails here
with the line to add.
"""

import ast
from pathlib import Path

import pytest
import yaml

from crypson.stages import STAGE_MODULES, runner, stage_function

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
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
    assert f"src/crypson/stages/{STAGE_MODULES[stage]}.py" in deps and "src/crypson/layout.py" in deps
    assert STAGES[stage]["cmd"] == f"crypson stage {stage.replace('_', '-')}"


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_param_key_is_in_params_yaml(stage):
    for key in STAGES[stage].get("params", []):
        node = PARAMS
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{stage}: params key {key!r} is not in params.yaml"
            node = node[part]


def _module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    return next((path for path in (base.with_suffix(".py"), base / "__init__.py") if path.is_file()), None)


def _imported(node: ast.AST) -> dict[str, str]:
    """Local name -> crypson module, for every import statement under `node`."""
    names = {}
    for inner in ast.walk(node):
        if isinstance(inner, ast.Import):
            names |= {alias.asname or alias.name.split(".")[0]: alias.name
                      for alias in inner.names if alias.name.startswith("crypson")}
        elif isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("crypson"):
            for alias in inner.names:
                submodule = f"{inner.module}.{alias.name}"
                names[alias.asname or alias.name] = submodule if _module_file(submodule) else inner.module
    return names


def _module_closure(modules: set[str]) -> set[Path]:
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        path = _module_file(todo.pop())
        if path is not None and path not in seen:
            seen.add(path)
            todo += _imported(ast.parse(path.read_text())).values()
    return seen


def stage_sources(stage: str) -> set[str]:
    """The source files `stage` runs: its module, and the closure of what its function reaches."""
    path = _module_file(f"crypson.stages.{STAGE_MODULES[stage]}")
    tree = ast.parse(path.read_text())
    top: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            top |= {target.id: node for target in targets if isinstance(target, ast.Name)}
    module_imports = _imported(ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))],
                                          type_ignores=[]))
    needed, visited, todo = set(), set(), [top[stage_function(stage).__name__]]
    while todo:
        node = todo.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        needed |= set(_imported(node).values())  # imports inside the function
        for name in (n.id for n in ast.walk(node) if isinstance(n, ast.Name)):
            if name in top:
                todo.append(top[name])
            elif name in module_imports:
                needed.add(module_imports[name])
    files = {path} | _module_closure(needed)
    return {str(file.relative_to(REPO)) for file in files if file.name != "__init__.py"}


@pytest.mark.parametrize("stage", list(STAGES))
def test_the_source_dependencies_are_the_stages_import_closure(stage):
    listed = {dep for dep in STAGES[stage]["deps"] if dep.startswith("src/")}
    closure = stage_sources(stage)
    assert not closure - listed, f"{stage}: add to its deps in dvc.yaml: {sorted(closure - listed)}"
    assert not listed - closure, f"{stage}: dvc.yaml lists code the stage does not run: {sorted(listed - closure)}"


def test_the_closure_follows_imports_inside_functions():
    # the attack stage reaches the learned attackers only through the attack suites' modules, and the
    # data stages never reach torch's training loop
    assert "src/crypson/evaluate/learned.py" in stage_sources("attack")
    assert "src/crypson/train/loop.py" not in stage_sources("ingest")
    assert "src/crypson/data/glyphs.py" in stage_sources("ingest")


def _top_functions(module: str) -> dict[str, ast.FunctionDef]:
    tree = ast.parse(_module_file(module).read_text())
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}


def _read_key(node: ast.Attribute) -> str | None:
    """`config.<section>` -> the section, `config.<section>.<key>` -> the dotted key, else None."""
    from crypson.config import Config

    sections = {field.alias or name: field for name, field in Config.model_fields.items()}
    sections |= {name: field for name, field in Config.model_fields.items()}
    inner = node.value
    if isinstance(inner, ast.Name) and inner.id == "config" and node.attr in sections:
        return sections[node.attr].alias or node.attr
    if isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Name) and inner.value.id == "config":
        field = sections.get(inner.attr)
        if field is not None and node.attr in getattr(field.annotation, "model_fields", {}):
            return f"{field.alias or inner.attr}.{node.attr}"
    return None


def config_reads(stage: str) -> set[str]:
    """The params keys the stage's code reads as `config.<section>` or `config.<section>.<key>`, in every
    function of crypson.stages that the stage function reaches (library functions get plain values: STYLE
    principle 2). Not seen: `getattr(config, name)` (the training stages' own section, which they also
    read by name) and crypson.model_files.hparams_from_config, which each training stage calls for its
    own model kinds."""
    stage_modules = {f"crypson.stages.{path.stem}" for path in (SRC / "crypson" / "stages").glob("*.py")}
    start = f"crypson.stages.{STAGE_MODULES[stage]}"
    todo = [(start, _top_functions(start)[stage_function(stage).__name__])]
    seen, reads = set(), set()
    while todo:
        module, node = todo.pop()
        if (module, node.name) in seen:
            continue
        seen.add((module, node.name))
        local = _top_functions(module)
        imported = _imported(ast.parse(_module_file(module).read_text()))
        within_key = set()  # `config.a` inside `config.a.b`: a read of a.b, not of all of a
        for inner in ast.walk(node):  # breadth first: `config.a.b` comes before its `config.a`
            if isinstance(inner, ast.Attribute):
                key = _read_key(inner) if id(inner) not in within_key else None
                if key is not None:
                    reads.add(key)
                    within_key.add(id(inner.value))
                target = imported.get(inner.value.id) if isinstance(inner.value, ast.Name) else None
                if target in stage_modules and inner.attr in _top_functions(target):
                    todo.append((target, _top_functions(target)[inner.attr]))
            elif isinstance(inner, ast.Name):
                if inner.id in local:
                    todo.append((module, local[inner.id]))
                elif imported.get(inner.id, "").rsplit(".", 1)[0] in stage_modules:
                    target = imported[inner.id].rsplit(".", 1)[0]
                    if inner.id in _top_functions(target):
                        todo.append((target, _top_functions(target)[inner.id]))
    return reads


def _covers(listed: str, read: str) -> bool:
    """A listed key covers a read of itself or below it; a read of a whole section (passed on as one object)
    is covered by any listed key in that section."""
    return read == listed or read.startswith(f"{listed}.") or listed.startswith(f"{read}.")


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_lists_exactly_the_params_it_reads(stage):
    """The Kubeflow tasks receive only these keys (crypson.kfp.runtime.split_params), so a key read but not
    listed would silently be its default there, not only a missed re-run under DVC."""
    listed, reads = STAGES[stage].get("params", []), config_reads(stage)
    unlisted = sorted(read for read in reads if not any(_covers(key, read) for key in listed))
    assert not unlisted, f"{stage}: add to its params in dvc.yaml: {unlisted}"
    unread = sorted(key for key in listed if not any(_covers(key, read) for read in reads))
    assert not unread, f"{stage}: dvc.yaml lists params its code never reads: {unread}"


def test_config_reads_follows_calls_into_other_stage_modules():
    assert {"cipher.candidates", "cipher.scheme", "attack", "seed"} <= config_reads("attack")
    assert {"evaluate.reference_epochs", "evaluate"} <= config_reads("evaluate")  # in image_quality's functions
    assert "promote" in config_reads("promote")  # in check_gates, called by promote
    assert config_reads("ingest") == {"data", "seed"}
