"""The queue-proxy sidecar: Knative-compatible, concurrency-enforcing, stats-reporting."""
