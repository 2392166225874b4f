# A GKE cluster for Crypson: an always-on CPU pool and a GPU pool that scales from zero.
# Why GKE rather than EKS: GKE installs the NVIDIA driver and device plugin itself
# (gpu_driver_installation_config below), taints GPU nodes and scales GPU pools from zero with the
# cluster autoscaler that it runs for us; it offers Filestore (ReadWriteMany, for the DDP
# workspace) as a built-in CSI driver; and a zonal cluster's control plane is free. On EKS the same
# needs the NVIDIA GPU Operator or a GPU AMI, a separately installed Cluster Autoscaler or Karpenter
# with node-template tags for scale-from-zero, EFS for ReadWriteMany and a paid control plane.

resource "google_container_cluster" "crypson" {
  name     = var.cluster_name
  location = var.zone

  # Node pools are managed below; GKE requires a default pool at creation, which goes at once.
  remove_default_node_pool = true
  initial_node_count       = 1

  release_channel {
    channel = var.release_channel
  }

  addons_config {
    gcp_filestore_csi_driver_config {
      enabled = true
    }
  }

  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }

  deletion_protection = false
}

resource "google_container_node_pool" "cpu" {
  name     = "cpu-pool"
  cluster  = google_container_cluster.crypson.id
  location = var.zone

  autoscaling {
    min_node_count = 1
    max_node_count = var.cpu_max_nodes
  }

  node_config {
    machine_type = var.cpu_machine_type
    disk_size_gb = 100
    oauth_scopes = ["https://www.googleapis.com/auth/cloud-platform"]
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

# Only pods that tolerate the taint and select the pool land here (the training steps: see
# pipelines/crypson_pipeline.py and infra/kubeflow/pytorchjob-ddp.yaml); GKE labels every node
# with cloud.google.com/gke-nodepool = the pool's name. min 0: no GPU is paid for while idle.
resource "google_container_node_pool" "gpu" {
  name     = "gpu-pool"
  cluster  = google_container_cluster.crypson.id
  location = var.zone

  initial_node_count = 0
  autoscaling {
    min_node_count = 0
    max_node_count = var.gpu_max_nodes
  }

  node_config {
    machine_type = var.gpu_machine_type
    spot         = var.gpu_spot
    disk_size_gb = 200 # the CUDA image is several GB
    oauth_scopes = ["https://www.googleapis.com/auth/cloud-platform"]

    guest_accelerator {
      type  = var.gpu_type
      count = var.gpu_count
      gpu_driver_installation_config {
        gpu_driver_version = "LATEST" # torch 2.14's CUDA 13 wheels need a recent (>= 580) driver
      }
    }

    taint {
      key    = "nvidia.com/gpu"
      value  = "present"
      effect = "NO_SCHEDULE"
    }

    labels = {
      "crypson.io/accelerator" = var.gpu_type
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

# Where `podman push` / `docker push` puts the component image.
resource "google_artifact_registry_repository" "images" {
  location      = var.region
  repository_id = "crypson"
  format        = "DOCKER"
}
