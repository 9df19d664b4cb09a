"""Kubernetes mode: InferencePool discovery, objectives, model rewrites and canaries, leader election."""
