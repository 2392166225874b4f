"""Offline checks of infra/: kustomize builds, strict Kubernetes schemas, and what schemas cannot see.

The schema check (kubernetes-validate, strict) runs against the Kubernetes minor of GKE's regular
channel that infra/terraform asks for; Kubeflow Trainer's custom resources are checked against its vendored
CRDs (infra/kubeflow/trainer/crds/), strictly too. A missing validator fails the tests instead of skipping them. The other checks are cross-file: GPU pods must tolerate the
taint and select the pool that Terraform creates, every Secret reference must name a key that the
Secret templates define, images must be pinned (and none is MinIO's). Each check is a small function
that returns the violations, tested on a known-bad object too, so that a check that cannot fail is
caught. The artifact store (SeaweedFS; GCS on GKE, with its Terraform) has its own tests in
test_infra_storage.py.
"""

from __future__ import annotations

import base64
import importlib.util
import re
import sys

import pytest
import yaml

from tests.unit.infra_helpers import (K8S, KUBEFLOW, KUSTOMIZATIONS, REPO, TERRAFORM, containers, crd_validator, find,
                                      pod_specs, read_env_file, schema_errors, secret_templates)

KUBERNETES_VERSION = "1.33.0"  # GKE regular channel's minor at the time of writing
GPU_RESOURCE = "nvidia.com/gpu"
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
BUILTIN_GROUPS = ("v1", "apps/v1", "batch/v1", "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1")
# Custom resources with a vendored CRD (infra/kubeflow/trainer/crds/, Kubeflow Trainer v2.3.0): (apiVersion, kind) -> plural
VENDORED_CRDS = {("trainer.kubeflow.org/v1alpha1", "TrainJob"): "trainjobs",
                 ("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime"): "clustertrainingruntimes"}


# ---- what the checks read -------------------------------------------------------------------
def terraform_gpu_pool() -> dict[str, str]:
    """Name, taint and minimum size of the GPU node pool in infra/terraform/main.tf."""
    main = (TERRAFORM / "main.tf").read_text()
    block = re.search(r'resource "google_container_node_pool" "gpu" \{(.*?)\n\}', main, re.S)
    assert block, "infra/terraform/main.tf defines no google_container_node_pool.gpu"
    body = block.group(1)
    taint = re.search(r'taint \{\s*key\s*=\s*"([^"]+)"\s*value\s*=\s*"([^"]+)"\s*effect\s*=\s*"([^"]+)"', body)
    assert taint, "the GPU pool has no taint block"
    effects = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute", "PREFER_NO_SCHEDULE": "PreferNoSchedule"}
    return {"name": re.search(r'name\s*=\s*"([^"]+)"', body).group(1),
            "taint_key": taint.group(1), "taint_value": taint.group(2), "taint_effect": effects[taint.group(3)],
            "min_nodes": re.search(r"min_node_count\s*=\s*(\d+)", body).group(1)}


def label(obj: dict) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']} {meta.get('namespace', '-')}/{meta['name']}"


# ---- the checks: each returns its violations ------------------------------------------------
def name_violations(obj: dict) -> list[str]:
    """Object, container, volume and port names must be DNS-1123 (port names IANA: <= 15 chars)."""
    bad = []
    if not DNS1123_SUBDOMAIN.match(obj["metadata"]["name"]) or len(obj["metadata"]["name"]) > 253:
        bad.append(f"{label(obj)}: name is not DNS-1123")
    for _, pod in pod_specs(obj):
        for container in containers(pod):
            if not DNS1123_LABEL.match(container["name"]):
                bad.append(f"{label(obj)}: container name {container['name']!r}")
            for port in container.get("ports", []):
                if "name" in port and (not DNS1123_LABEL.match(port["name"]) or len(port["name"]) > 15):
                    bad.append(f"{label(obj)}: port name {port['name']!r}")
        for volume in pod.get("volumes", []):
            if not DNS1123_LABEL.match(volume["name"]):
                bad.append(f"{label(obj)}: volume name {volume['name']!r}")
    return bad


def restart_policy_violations(obj: dict) -> list[str]:
    """Jobs (and training replicas) restart OnFailure or Never; `Always` is invalid for them."""
    if obj["kind"] == "PyTorchJob":  # the operator sets the pods' policy from each replica spec's
        policies = [(replica, spec.get("restartPolicy"))
                    for replica, spec in obj["spec"]["pytorchReplicaSpecs"].items()]
    elif obj["kind"] in ("Job", "CronJob"):
        policies = [(where, pod.get("restartPolicy")) for where, pod in pod_specs(obj)]
    else:
        return []
    return [f"{label(obj)} {where}: restartPolicy {policy!r}"
            for where, policy in policies if policy not in ("OnFailure", "Never")]


def gpu_violations(obj: dict, pool: dict[str, str]) -> list[str]:
    """GPU containers: requests == limits; their pods select the GPU pool and tolerate its taint."""
    bad = []
    for where, pod in pod_specs(obj):
        uses_gpu = False
        for container in containers(pod):
            resources = container.get("resources", {})
            requested = resources.get("requests", {}).get(GPU_RESOURCE)
            limited = resources.get("limits", {}).get(GPU_RESOURCE)
            if requested is None and limited is None:
                continue
            uses_gpu = True
            if limited is None or (requested is not None and str(requested) != str(limited)):
                bad.append(f"{label(obj)} {where}: {GPU_RESOURCE} requests {requested} != limits {limited}")
        if not uses_gpu:
            continue
        if pod.get("nodeSelector", {}).get("cloud.google.com/gke-nodepool") != pool["name"]:
            bad.append(f"{label(obj)} {where}: no nodeSelector for the pool {pool['name']!r}")
        if not any(toleration_matches(toleration, pool) for toleration in pod.get("tolerations", [])):
            bad.append(f"{label(obj)} {where}: no toleration for {pool['taint_key']}={pool['taint_value']}"
                       f":{pool['taint_effect']}")
    return bad


def toleration_matches(toleration: dict, pool: dict[str, str]) -> bool:
    """Kubernetes' rule: same key (and value, unless Exists) and same effect (or none = all)."""
    if toleration.get("key") != pool["taint_key"]:
        return False
    if toleration.get("effect") not in (None, "", pool["taint_effect"]):
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return True
    return toleration.get("value") == pool["taint_value"]


def secret_ref_violations(obj: dict, secrets: dict[tuple[str, str], set[str]]) -> list[str]:
    """Every secretKeyRef / envFrom secretRef names a Secret (of the object's namespace) and its key."""
    namespace = obj["metadata"].get("namespace", "default")
    bad = []
    for where, pod in pod_specs(obj):
        for container in containers(pod):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref.get("key") not in secrets.get((namespace, ref["name"]), set()):
                    bad.append(f"{label(obj)} {where}: {env['name']} <- {ref['name']}/{ref.get('key')} undefined")
            for source in container.get("envFrom", []):
                ref = source.get("secretRef")
                if ref and (namespace, ref["name"]) not in secrets:
                    bad.append(f"{label(obj)} {where}: envFrom Secret {ref['name']!r} undefined in {namespace}")
    return bad


def image_violations(obj: dict) -> list[str]:
    """Images carry an explicit tag other than `latest` (or a digest)."""
    bad = []
    for where, pod in pod_specs(obj):
        for container in containers(pod):
            image = container["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if "@sha256:" not in image and (not tag or tag == "latest"):
                bad.append(f"{label(obj)} {where}: image {image!r} is not pinned")
    return bad


# ---- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rendered(k8s_builds: dict[str, list[dict]]) -> list[dict]:
    return [obj for objects in k8s_builds.values() for obj in objects]


@pytest.fixture(scope="module")
def extra_manifests() -> list[dict]:
    """Plain manifests applied with `kubectl apply -f` (infra/kubeflow/*.yaml, e.g. the legacy DDP PyTorchJob;
    infra/kubeflow/trainer/*.yaml: RBAC, the torch runtime, the example TrainJob; not the vendored CRDs)."""
    objects = []
    for path in sorted([*KUBEFLOW.glob("*.yaml"), *(KUBEFLOW / "trainer").glob("*.yaml")]):
        objects += [obj for obj in yaml.safe_load_all(path.read_text()) if obj and "kind" in obj]
    return objects


def secrets_of(objects: list[dict]) -> dict[tuple[str, str], set[str]]:
    """(namespace, rendered name) -> keys of the Secrets among `objects`."""
    return {(obj["metadata"]["namespace"], obj["metadata"]["name"]): set(obj.get("data", {}))
            for obj in objects if obj["kind"] == "Secret"}


# ---- tests of the manifests -------------------------------------------------------------------
TRACKING_STACK = [("Namespace", None, "crypson"),
                  ("StatefulSet", "crypson", "crypson-postgres"), ("Service", "crypson", "crypson-postgres"),
                  ("Deployment", "crypson", "crypson-mlflow"), ("Service", "crypson", "crypson-mlflow")]
SEAWEEDFS = [("StatefulSet", "crypson", "crypson-seaweedfs"), ("Service", "crypson", "crypson-seaweedfs"),
             ("NetworkPolicy", "crypson", "crypson-seaweedfs"), ("Job", "crypson", "crypson-create-buckets")]


def test_kustomize_builds_the_tracking_stack(k8s_builds: dict[str, list[dict]]) -> None:
    def found(directory: str) -> set[tuple[str, str | None, str]]:
        return {(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
                for obj in k8s_builds[directory] if obj["kind"] not in ("Secret", "ConfigMap")}  # hashed names

    platform_agnostic, gke = found("overlays/platform-agnostic"), found("overlays/gke")
    assert set(TRACKING_STACK + SEAWEEDFS) <= platform_agnostic
    assert set(TRACKING_STACK) | {("ServiceAccount", "crypson", "crypson-mlflow")} <= gke
    assert gke.isdisjoint(SEAWEEDFS), "the GKE overlay keeps SeaweedFS or the bucket Job"
    assert found("pipelines") == {("PersistentVolumeClaim", "kubeflow", "crypson-workspace"),
                                  ("PersistentVolumeClaim", "kubeflow", "crypson-checkpoints")}
    find(k8s_builds["pipelines"], "Secret", "crypson-mlflow")
    statefulsets = [obj for obj in k8s_builds["overlays/platform-agnostic"] if obj["kind"] == "StatefulSet"]
    assert len(statefulsets) == 2 and all(obj["spec"]["volumeClaimTemplates"] for obj in statefulsets)


def test_pipeline_secret_holds_exactly_the_keys_the_steps_read(k8s_builds: dict[str, list[dict]]) -> None:
    secret = find(k8s_builds["pipelines"], "Secret", "crypson-mlflow")
    assert set(secret["data"]) == {"MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL",
                                   "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    tracking_uri = base64.b64decode(secret["data"]["MLFLOW_TRACKING_URI"]).decode()
    for directory in ("overlays/platform-agnostic", "overlays/gke"):  # the same Service in both
        port = find(k8s_builds[directory], "Service", "crypson-mlflow")["spec"]["ports"][0]["port"]
        assert tracking_uri == f"http://crypson-mlflow.crypson.svc.cluster.local:{port}"


def test_objects_pass_the_strict_schema(rendered: list[dict], extra_manifests: list[dict]) -> None:
    import kubernetes_validate as validate  # requirements.lock: a missing validator fails, never skips

    kinds = {obj["kind"] for obj in extra_manifests}
    assert {"Role", "RoleBinding", "TrainJob", "ClusterTrainingRuntime"} <= kinds, "infra/kubeflow/trainer unread"
    for obj in rendered + extra_manifests:
        if obj["apiVersion"] in BUILTIN_GROUPS:
            validate.validate(obj, KUBERNETES_VERSION, strict=True)
        elif (obj["apiVersion"], obj["kind"]) in VENDORED_CRDS:  # Kubeflow Trainer's: its vendored CRD schema
            assert schema_errors(crd_validator(VENDORED_CRDS[obj["apiVersion"], obj["kind"]]), obj) == [], label(obj)
        else:  # a custom resource without a vendored schema (the legacy PyTorchJob): each pod template as a Pod
            for where, pod in pod_specs(obj):
                validate.validate({"apiVersion": "v1", "kind": "Pod",
                                   "metadata": {"name": f"{obj['metadata']['name']}-{where.lower()}"},
                                   "spec": pod}, KUBERNETES_VERSION, strict=True)


def test_names_restart_policies_and_images(rendered: list[dict], extra_manifests: list[dict]) -> None:
    bad = [v for obj in rendered + extra_manifests
           for v in name_violations(obj) + restart_policy_violations(obj) + image_violations(obj)]
    assert bad == []
    assert any(obj["kind"] == "Job" for obj in rendered), "no Job: the restart-policy check checked nothing"


def test_no_minio_image_remains(rendered: list[dict], extra_manifests: list[dict]) -> None:
    """MinIO's community edition is unmaintained: SeaweedFS (and GCS on GKE) replaced it everywhere."""
    images = [container["image"] for obj in rendered + extra_manifests
              for _, pod in pod_specs(obj) for container in containers(pod)]
    assert len(images) >= 5 and "chrislusf/seaweedfs" in {image.rsplit(":", 1)[0] for image in images}
    assert [image for image in images if "minio" in image.lower()] == []
    manifests = [path for path in (REPO / "infra").rglob("*") if path.suffix in (".yaml", ".tf", ".example")]
    assert [path for path in manifests if "minio" in path.read_text().lower()] == []


def test_gpu_pods_match_the_terraform_pool(rendered: list[dict], extra_manifests: list[dict]) -> None:
    pool = terraform_gpu_pool()
    assert [v for obj in rendered + extra_manifests for v in gpu_violations(obj, pool)] == []


def test_secret_references_name_template_keys(k8s_builds: dict[str, list[dict]],
                                              extra_manifests: list[dict]) -> None:
    # Each build's objects refer to its own Secrets; the plain manifests to those of the pipelines build.
    checked = [(objects, secrets_of(objects)) for objects in k8s_builds.values()]
    checked.append((extra_manifests, secrets_of(k8s_builds["pipelines"])))
    assert [v for objects, secrets in checked for obj in objects for v in secret_ref_violations(obj, secrets)] == []
    # The rendered Secrets are exactly the templates (names aside from kustomize's hash suffix).
    for directory in KUSTOMIZATIONS:
        rendered_secrets = secrets_of(k8s_builds[directory])
        templates = secret_templates(directory)
        assert len(rendered_secrets) == len(templates), f"{directory}: Secrets without a template"
        for (namespace, name), keys in templates.items():
            matches = [k for (ns, n), k in rendered_secrets.items() if ns == namespace and re.fullmatch(
                rf"{re.escape(name)}(-[a-z0-9]{{10}})?", n)]
            assert matches == [keys], f"{directory}: Secret {namespace}/{name}: rendered {matches}, template {keys}"


def test_secret_templates_hold_placeholders_only() -> None:
    examples = sorted(K8S.rglob("*.env.example"))
    assert examples, "no Secret templates under infra/k8s"
    for path in examples:
        for key, value in read_env_file(path).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY", key):
                assert value.startswith("REPLACE_WITH"), f"{path.name}: {key} holds a value, not a placeholder"
    for directory in KUSTOMIZATIONS:
        ignore = (K8S / directory / "secrets" / ".gitignore").read_text().split()
        assert "*.env" in ignore, f"{directory}/secrets/.gitignore must keep the real env files out of git"


def test_pipeline_code_uses_the_infra_names() -> None:
    """pipelines/crypson_pipeline.py places GPU steps and reads the Secret that infra/ creates."""
    path = REPO / "pipelines" / "crypson_pipeline.py"
    if importlib.util.find_spec("kfp") is None:  # pinned in requirements.lock: a missing tool fails, never skips
        pytest.fail("kfp is not installed (requirements.lock pins it; `make setup`)")
    sys.path.insert(0, str(REPO))
    try:
        spec = importlib.util.spec_from_file_location("crypson_pipeline_for_infra_test", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO))
    pool = terraform_gpu_pool()
    assert module.GPU_NODE_LABEL == ("cloud.google.com/gke-nodepool", pool["name"])
    assert toleration_matches(module.GPU_TAINT, pool)
    assert set(module.MLFLOW_SECRET_KEYS) <= secret_templates("pipelines")[("kubeflow", module.MLFLOW_SECRET)]


# ---- Terraform ---------------------------------------------------------------------------------
def test_terraform_gpu_pool_scales_from_zero_with_the_gke_taint() -> None:
    pool = terraform_gpu_pool()
    assert pool == {"name": "gpu-pool", "taint_key": "nvidia.com/gpu", "taint_value": "present",
                    "taint_effect": "NoSchedule", "min_nodes": "0"}
    variables = (TERRAFORM / "variables.tf").read_text()
    default_gpu = re.search(r'variable "gpu_type" \{.*?default\s*=\s*"([^"]+)"', variables, re.S).group(1)
    assert default_gpu in ("nvidia-l4", "nvidia-tesla-t4")


# ---- the checks catch what they are for -----------------------------------------------------------
POOL = {"name": "gpu-pool", "taint_key": "nvidia.com/gpu", "taint_value": "present",
        "taint_effect": "NoSchedule", "min_nodes": "0"}


def job(pod_spec: dict, name: str = "train") -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "kubeflow"},
            "spec": {"template": {"spec": pod_spec}}}


def test_checks_flag_known_bad_objects() -> None:
    gpu = {"requests": {GPU_RESOURCE: 1}, "limits": {GPU_RESOURCE: 2}}
    bad = job({"restartPolicy": "Always",
               "containers": [{"name": "Train_1", "image": "ghcr.io/x/y", "resources": gpu,
                               "ports": [{"name": "a-very-long-port-name", "containerPort": 1}],
                               "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "NOPE"}}}],
                               "envFrom": [{"secretRef": {"name": "missing"}}]}],
               "tolerations": [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "absent",
                                "effect": "NoSchedule"}]}, name="Bad_Name")
    assert len(name_violations(bad)) == 3  # object, container and port names
    assert restart_policy_violations(bad) == ["Job kubeflow/Bad_Name : restartPolicy 'Always'"]
    assert len(image_violations(bad)) == 1
    assert len(gpu_violations(bad, POOL)) == 3  # unequal, no node selector, wrong toleration value
    assert len(secret_ref_violations(bad, {("kubeflow", "s"): {"OK"}})) == 2


def test_checks_pass_good_objects() -> None:
    good = job({"restartPolicy": "OnFailure", "nodeSelector": {"cloud.google.com/gke-nodepool": "gpu-pool"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                "containers": [{"name": "train", "image": "ghcr.io/x/y:1.0",
                                "resources": {"requests": {GPU_RESOURCE: "1"}, "limits": {GPU_RESOURCE: 1}},
                                "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "OK"}}}]}]})
    assert name_violations(good) + restart_policy_violations(good) + image_violations(good) == []
    assert gpu_violations(good, POOL) == []
    assert secret_ref_violations(good, {("kubeflow", "s"): {"OK"}}) == []
    assert image_violations(job({"containers": [{"name": "a", "image": "registry:5000/x:latest"}]})) != []
    assert image_violations(job({"containers": [{"name": "a", "image": "registry:5000/x"}]})) != []
