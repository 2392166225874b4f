"""What the infra tests read: the kustomize builds, Secret templates, pod templates, Terraform blocks."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
TERRAFORM = REPO / "infra" / "terraform"
KUBEFLOW = REPO / "infra" / "kubeflow"
# The kustomizations a user applies (infra/README.md): one tracking-stack overlay, then the pipelines'.
KUSTOMIZATIONS = ("overlays/platform-agnostic", "overlays/gke", "pipelines")


def render(kubectl: str, destination: Path) -> dict[str, list[dict]]:
    """Every kustomization's objects, built from a copy of infra/k8s with the example env files in place.

    Args:
        kubectl: the kubectl binary (it bundles kustomize).
        destination: an empty folder for the copy.

    Returns:
        kustomization directory (as in KUSTOMIZATIONS) -> the objects `kubectl apply -k` would create.
    """
    tree = destination / "k8s"
    shutil.copytree(K8S, tree)
    for example in tree.rglob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    builds = {}
    for directory in KUSTOMIZATIONS:
        result = subprocess.run([kubectl, "kustomize", str(tree / directory)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
        builds[directory] = [obj for obj in yaml.safe_load_all(result.stdout) if obj]
    return builds


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines of an env file (comments and blank lines skipped)."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def secret_templates(directory: str) -> dict[tuple[str, str], set[str]]:
    """(namespace, name) -> keys, from a kustomization's secretGenerators and their `.example` env files."""
    kustomization = yaml.safe_load((K8S / directory / "kustomization.yaml").read_text())
    templates: dict[tuple[str, str], set[str]] = {}
    for generator in kustomization.get("secretGenerator", []):
        namespace = generator.get("namespace") or kustomization.get("namespace", "default")
        keys: set[str] = set()
        for env in generator["envs"]:
            keys |= set(read_env_file(K8S / directory / f"{env}.example"))
        templates[(namespace, generator["name"])] = keys
    return templates


def pod_specs(obj: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod spec) for every pod template an object carries (workloads and PyTorchJob replicas)."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind == "Pod":
        yield "", spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield "", spec["template"]["spec"]
    elif kind == "CronJob":
        yield "", spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "PyTorchJob":
        for replica, replica_spec in spec["pytorchReplicaSpecs"].items():
            yield replica, replica_spec["template"]["spec"]


def containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("initContainers", []) + pod_spec.get("containers", [])


def find(objects: list[dict], kind: str, name: str) -> dict:
    """The one object of `kind` whose name is `name`, or `name` plus kustomize's hash suffix."""
    matches = [obj for obj in objects if obj["kind"] == kind
               and re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", obj["metadata"]["name"])]
    assert len(matches) == 1, f"{kind} {name}: {len(matches)} objects in the build"
    return matches[0]


def env_of(container: dict) -> dict[str, dict]:
    """name -> the env entry (with `value` or `valueFrom`) of a container."""
    return {entry["name"]: entry for entry in container.get("env", [])}


# ---- Terraform ------------------------------------------------------------------------------------
def terraform_blocks() -> dict[str, Any]:
    """infra/terraform/*.tf parsed by python-hcl2 (quotes stripped, no comments), merged by block type.

    Returns:
        {"resource": {(type, name): body}, "variable": {name: body}, "output": {name: body},
        "locals": {name: expression}}; expressions stay strings such as "${var.project_id}-x".
    """
    merged: dict[str, Any] = {"resource": {}, "variable": {}, "output": {}, "locals": {}}
    for path in sorted(TERRAFORM.glob("*.tf")):
        parsed = parse_hcl(path)
        for resources in parsed.get("resource", []):
            for kind, named in resources.items():
                for name, body in named.items():
                    merged["resource"][(kind, name)] = body
        for block in ("variable", "output"):
            for entry in parsed.get(block, []):
                merged[block].update(entry)
        for entry in parsed.get("locals", []):
            merged["locals"].update(entry)
    return merged


def parse_hcl(path: Path) -> dict[str, Any]:
    """One HCL file (.tf or .tfvars) as python-hcl2 reads it: quotes stripped, no comments, heredocs as text."""
    import hcl2

    options = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True,
                                        preserve_heredocs=False)
    return hcl2.loads(path.read_text(), serialization_options=options)


def interpolate(expression: str, values: dict[str, str]) -> str:
    """Replace each `${reference}` in a Terraform string by values[reference]; unknown ones fail."""
    def value(match: re.Match[str]) -> str:
        reference = match.group(1)
        assert reference in values, f"no value for ${{{reference}}} in {expression!r}"
        return values[reference]

    return re.sub(r"\$\{([^}]+)\}", value, expression)


# ---- custom resources ------------------------------------------------------------------------------
TRAINER_CRDS = KUBEFLOW / "trainer" / "crds"


def strict_schema(schema: Any) -> Any:
    """A CRD's openAPIV3Schema that refuses unknown fields, as `kubectl apply --validate=strict` does.

    The API server prunes unknown fields of a structural schema silently; JSON Schema accepts them unless
    an object says `additionalProperties: false`, which this adds to every object schema with
    `properties` (not to those that keep unknown fields, x-kubernetes-preserve-unknown-fields).
    Not checked offline: the x-kubernetes-validations (CEL) rules and the webhooks.
    """
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: strict_schema(value) if key in ("items", "additionalProperties", "not", "allOf", "anyOf",
                                                    "oneOf") else value for key, value in schema.items()}
    if isinstance(schema.get("properties"), dict):
        strict["properties"] = {name: strict_schema(value) for name, value in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            strict["additionalProperties"] = False
    return strict


def crd_validator(plural: str):
    """A jsonschema validator of the vendored Trainer CRD `plural` (trainjobs, clustertrainingruntimes).

    jsonschema is a hard requirement here (requirements.lock): a missing one fails the tests, never skips them.
    """
    import jsonschema

    (version,) = yaml.safe_load((TRAINER_CRDS / f"{plural}.yaml").read_text())["spec"]["versions"]
    schema = strict_schema(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def schema_errors(validator, obj: dict) -> list[str]:
    """Every violation of `obj`, one line each: where, then what."""
    return [f"{'/'.join(str(part) for part in error.absolute_path)}: {error.message}"
            for error in validator.iter_errors(obj)]
