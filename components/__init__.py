"""Kubeflow components, one per Crypson stage (see stages.py)."""
