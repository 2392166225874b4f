output "get_credentials" {
  description = "Points kubectl at the new cluster."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.crypson.name} --zone ${var.zone} --project ${var.project_id}"
}

output "image_repository" {
  description = "Push the component image here and pass it to `crypson pipeline compile|submit --image`."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}/crypson"
}
