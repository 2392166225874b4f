# GCS in place of an in-cluster S3 store: MLflow's artifacts and the DVC remote, reached without keys
# through Workload Identity. Kubernetes ServiceAccounts listed in local.storage_ksas act as the Google
# service account below (roles/iam.workloadIdentityUser), which may read and write both buckets.

locals {
  # namespace/name of the Kubernetes ServiceAccounts that act as google_service_account.storage:
  # the MLflow server (infra/k8s/overlays/gke/mlflow-serviceaccount.yaml). The pipeline steps
  # (kubeflow/pipeline-runner) would join once the image can read a gs:// DVC remote (infra/README.md).
  storage_ksas = ["crypson/crypson-mlflow"]

  # The MLflow server's --artifacts-destination (infra/k8s/overlays/gke/gcs.env).
  mlflow_artifacts_destination = "gs://${google_storage_bucket.mlflow.name}/mlflow"
}

resource "google_storage_bucket" "mlflow" {
  name                        = "${var.project_id}-crypson-mlflow"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.buckets_force_destroy
}

resource "google_storage_bucket" "dvc" {
  name                        = "${var.project_id}-crypson-dvc"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.buckets_force_destroy
}

resource "google_service_account" "storage" {
  account_id   = "crypson-storage"
  display_name = "Crypson workloads on GKE: the MLflow artifact bucket and the DVC remote"
}

resource "google_storage_bucket_iam_member" "mlflow_object_admin" {
  bucket = google_storage_bucket.mlflow.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.storage.email}"
}

resource "google_storage_bucket_iam_member" "dvc_object_admin" {
  bucket = google_storage_bucket.dvc.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.storage.email}"
}

# The workload pool comes from the cluster, so this waits for it: the pool exists only once a
# cluster with Workload Identity does, and a binding to it fails before.
resource "google_service_account_iam_member" "workload_identity" {
  for_each           = toset(local.storage_ksas)
  service_account_id = google_service_account.storage.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${google_container_cluster.crypson.workload_identity_config[0].workload_pool}[${each.value}]"
}
