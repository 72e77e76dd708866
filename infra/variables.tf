variable "project_id" {
  description = "Google Cloud project ID that hosts the workshop (gcloud config get-value project)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a Google Cloud project ID: 6-30 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "project_number" {
  description = "Numeric project number (gcloud projects describe PROJECT --format='value(projectNumber)'); Workload Identity principals use it."
  type        = string

  validation {
    condition     = can(regex("^[0-9]{6,20}$", var.project_number))
    error_message = "project_number must be the numeric project number, not the project ID."
  }
}

variable "region" {
  description = "Region of the Autopilot cluster and the Artifact Registry repository; it needs NVIDIA L4 GPUs."
  type        = string
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must look like us-central1."
  }
}

variable "cluster_name" {
  description = "Name of the GKE Autopilot cluster."
  type        = string
  default     = "gradio-chat-cluster"

  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$", var.cluster_name))
    error_message = "cluster_name must be 1-40 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "firestore_location" {
  description = "Location of the Firestore database (a multi-region such as nam5, or a region)."
  type        = string
  default     = "nam5"
}

variable "ksa_name" {
  description = "Kubernetes service account of the chat app; must match deploy/chat-deploy.yaml."
  type        = string
  default     = "gradio-chat-ksa"
}

variable "namespace" {
  description = "Kubernetes namespace the chat app runs in."
  type        = string
  default     = "default"
}

variable "iap_members" {
  description = "Who may sign in to the app through IAP: user:EMAIL, group:EMAIL or domain:DOMAIN entries."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for member in var.iap_members : can(regex("^(user|group|domain|serviceAccount):[^\\s]+$", member))])
    error_message = "Each entry of iap_members is user:EMAIL, group:EMAIL, domain:DOMAIN or serviceAccount:EMAIL."
  }
}

variable "domain" {
  description = "The app's domain for its certificate; empty: <address-with-dashes>.sslip.io, which needs no DNS setup."
  type        = string
  default     = ""
}
