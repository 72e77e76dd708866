# What the workshop provisions: the APIs, a GKE Autopilot cluster for Gemma and the app, the
# Firestore database for chat history, the registry Skaffold pushes to, least-privilege
# Workload Identity grants for the app's Kubernetes service account, and the app's front door:
# a static address, a Google-managed certificate and who may sign in through IAP.
#
# In the workshop you write four of these blocks yourself, under their TODO comments (notebook
# 01): the copy `make lab` gives you, workspace/infra/, leaves them out.

locals {
  services = {
    cloudbuild       = "cloudbuild.googleapis.com"
    artifactregistry = "artifactregistry.googleapis.com"
    container        = "container.googleapis.com"
    firestore        = "firestore.googleapis.com"
    aiplatform       = "aiplatform.googleapis.com"
    iap              = "iap.googleapis.com"
  }

  # The certificate's name: your own domain, or one that names the address itself (sslip.io
  # answers 1-2-3-4.sslip.io with 1.2.3.4), so a workshop needs no DNS of its own.
  app_domain = var.domain != "" ? var.domain : "${replace(google_compute_global_address.app.address, ".", "-")}.sslip.io"
}

resource "google_project_service" "enabled" {
  for_each = local.services

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}

# TODO: Create a GKE Autopilot cluster (notebook 01, step 1): google_container_cluster "primary",
# named var.cluster_name, in var.region, in Autopilot mode, deletable by `terraform destroy`, on the
# default network, with the Gateway API on, created once the Kubernetes Engine API is enabled.

# TODO: Create a Firestore database (notebook 01, step 2): google_firestore_database "chat",
# named "chat-app-db", in Native mode, at var.firestore_location, deleted with `terraform destroy`,
# created once the Firestore API is enabled.

# TODO: Create an initial Firestore document (notebook 01, step 3): google_firestore_document
# "initialize", chat_sessions/initialize, in the database above, so that the console shows the
# collection the app writes from the start.

# The app's sidebar reads a visitor's newest chats (owner ==, ordered by updated, newest first):
# without this index Firestore refuses that query, and the app would read all of them.
resource "google_firestore_index" "sessions_by_owner" {
  project    = var.project_id
  database   = google_firestore_database.chat.name
  collection = "chat_sessions"

  fields {
    field_path = "owner"
    order      = "ASCENDING"
  }
  fields {
    field_path = "updated"
    order      = "DESCENDING"
  }
}

resource "google_artifact_registry_repository" "chat_app" {
  # checkov:skip=CKV_GCP_84:Google-managed encryption is enough for workshop images; CSEK keys would be one more thing to lose.
  project       = var.project_id
  location      = var.region
  repository_id = "chat-app-repo"
  format        = "DOCKER"
  description   = "Images of the hybridchat app, pushed by Skaffold through Cloud Build."

  depends_on = [google_project_service.enabled["artifactregistry"]]
}

# TODO: Configure the Workload Identity IAM bindings (notebook 01, step 4): the app's Kubernetes
# service account (var.ksa_name in var.namespace) as an IAM principal of this project's workload
# identity pool, granted roles/aiplatform.user and roles/datastore.user, and nothing broader.

# The app's front door (deploy/chat-gateway.yaml names both): the Gateway's address, and a
# certificate Google issues once that name resolves to it (15-60 minutes after the Gateway).
resource "google_compute_global_address" "app" {
  project = var.project_id
  name    = "gradio-chat-ip"
}

resource "google_compute_managed_ssl_certificate" "app" {
  project = var.project_id
  name    = "gradio-chat-cert"

  managed {
    domains = [local.app_domain]
  }
}

# Who may sign in to the app through IAP (IAP-secured Web App User on the project's web apps).
resource "google_iap_web_iam_member" "app_users" {
  for_each = toset(var.iap_members)

  project = var.project_id
  role    = "roles/iap.httpsResourceAccessor"
  member  = each.value

  depends_on = [google_project_service.enabled["iap"]]
}
