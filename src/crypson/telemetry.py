"""No usage telemetry: MLflow 3 and DVC send it unless told not to; nothing leaves this machine."""

import os


def disable_telemetry() -> None:
    """Set the switches (unless the user set them): MLflow, DVC, and anything that honours DO_NOT_TRACK."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
