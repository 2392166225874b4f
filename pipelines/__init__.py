"""The Kubeflow pipeline: wiring and placement (see crypson_pipeline.py)."""
