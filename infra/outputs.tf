output "cluster_name" {
  description = "The GKE Autopilot cluster."
  value       = google_container_cluster.primary.name
}

output "cluster_location" {
  description = "Region of the cluster."
  value       = google_container_cluster.primary.location
}

output "get_credentials_command" {
  description = "Points kubectl at the new cluster."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.primary.name} --region ${google_container_cluster.primary.location} --project ${var.project_id}"
}

output "artifact_registry_repo" {
  description = "Skaffold's --default-repo."
  value       = "${google_artifact_registry_repository.chat_app.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.chat_app.repository_id}"
}

output "firestore_database" {
  description = "The database the app's HYBRIDCHAT_STORE_URL names (firestore://chat-app-db)."
  value       = google_firestore_database.chat.name
}

output "app_url" {
  description = "Where the app answers, behind Google sign-in, once its certificate is active."
  value       = "https://${local.app_domain}"
}
