output "get_credentials" {
  description = "Points kubectl at the new cluster."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.crypson.name} --zone ${var.zone} --project ${var.project_id}"
}

output "image_repository" {
  description = "Push the component image here and pass it to `crypson pipeline compile|submit --image`."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}/crypson"
}

output "mlflow_artifacts_destination" {
  description = "Where the MLflow server keeps artifacts (its --artifacts-destination)."
  value       = local.mlflow_artifacts_destination
}

output "dvc_remote_url" {
  description = "The DVC remote on GCS: `dvc remote add -d gcs <url>` (needs dvc-gs where dvc runs)."
  value       = "gs://${google_storage_bucket.dvc.name}/dvc"
}

output "storage_service_account" {
  description = "The Google service account that the Kubernetes ServiceAccounts in local.storage_ksas act as."
  value       = google_service_account.storage.email
}

output "gke_overlay_env" {
  description = "infra/k8s/overlays/gke/gcs.env: `terraform output -raw gke_overlay_env > infra/k8s/overlays/gke/gcs.env`."
  value       = <<-EOT
    MLFLOW_ARTIFACTS_DESTINATION=${local.mlflow_artifacts_destination}
    GCP_SERVICE_ACCOUNT=${google_service_account.storage.email}
  EOT
}
