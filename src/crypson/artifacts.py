"""The old name of crypson.model_files, kept for the registry: every version logged before the rename
stores a `registry_network.py` that imports `crypson.artifacts`, and MLflow runs that stored file when it
loads the version. New code imports crypson.model_files."""

from crypson.model_files import FORMAT, build, hparams_from_config, load_model, refuse_pickle_loads, save_model

__all__ = ["FORMAT", "build", "hparams_from_config", "load_model", "refuse_pickle_loads", "save_model"]
