variable "project_id" {
  description = "The Google Cloud project that holds the cluster."
  type        = string
}

variable "region" {
  description = "Region of the cluster's network, the Artifact Registry repository and the GCS buckets."
  type        = string
  default     = "europe-west4"
}

variable "zone" {
  description = "Zone of the cluster. Zonal: one free control plane, and T4/L4 capacity is per zone."
  type        = string
  default     = "europe-west4-a"
}

variable "cluster_name" {
  description = "Name of the GKE cluster."
  type        = string
  default     = "crypson"
}

variable "release_channel" {
  description = "GKE release channel (its Kubernetes minor is what tests/unit/test_infra.py validates against)."
  type        = string
  default     = "REGULAR"
}

variable "cpu_machine_type" {
  description = "Machine type of the always-on pool (KFP, MLflow, PostgreSQL, CPU steps)."
  type        = string
  default     = "e2-standard-8"
}

variable "cpu_max_nodes" {
  description = "Upper bound of the CPU pool's autoscaler."
  type        = number
  default     = 4
}

variable "gpu_type" {
  description = "Accelerator of the GPU pool: nvidia-l4 (g2 machines) or nvidia-tesla-t4 (n1 machines)."
  type        = string
  default     = "nvidia-l4"
  validation {
    condition     = contains(["nvidia-l4", "nvidia-tesla-t4"], var.gpu_type)
    error_message = "gpu_type must be nvidia-l4 or nvidia-tesla-t4."
  }
}

variable "gpu_machine_type" {
  description = "Machine type of the GPU pool: g2-standard-8 carries one L4; use n1-standard-8 for a T4."
  type        = string
  default     = "g2-standard-8"
}

variable "gpu_count" {
  description = "GPUs a node of the GPU pool carries: params' distributed.gpus_per_node must not exceed it. 4 L4s: g2-standard-48."
  type        = number
  default     = 1
  validation {
    condition     = contains([1, 2, 4, 8], var.gpu_count)
    error_message = "gpu_count must be 1, 2, 4 or 8."
  }
}

variable "gpu_max_nodes" {
  description = "Upper bound of the GPU pool's autoscaler (TrainJob nodes = distributed.nodes per training stage)."
  type        = number
  default     = 2
}

variable "gpu_spot" {
  description = "Spot GPU nodes: far cheaper; a pre-empted training step resumes from its checkpoint."
  type        = bool
  default     = true
}

variable "buckets_force_destroy" {
  description = "Let `terraform destroy` delete the GCS buckets with their contents (MLflow artifacts, DVC data); off, it stops at a non-empty bucket."
  type        = bool
  default     = false
}
