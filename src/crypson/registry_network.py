"""What MLflow runs to load one registered network as a pyfunc: MLflow's "models from code".

Logged by `tracking.log_network` as the model's code, beside the network's weights file (weights +
hyper-parameters, `crypson.model_files`); nothing is pickled. `mlflow.pyfunc.load_model` on a version
rebuilds the module from this package's code and loads the weights with `weights_only=True`:

    generator:  (N,) class indices              -> (N, 1024) images in [0, 1] (fresh noise)
    vae:        (N, 1024) images in [0, 1]       -> (N, d) latent means
    classifier: (N, d) latents                   -> (N, K) class logits

The cipher does not go through this: `tracking.load_registered_network` downloads the weights file,
checks its SHA-256 against the version's tag and loads it the same weights-only way.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class RegisteredNetwork(PythonModel):
    """One of the three networks, rebuilt from code and weights."""

    def load_context(self, context: Any) -> None:
        from crypson import model_files

        self.kind = context.model_config["kind"]
        self.module, self.classes = model_files.load_model(context.artifacts["weights"], self.kind, "cpu")

    def predict(self, context: Any, model_input: Any, params: dict | None = None) -> Any:
        return network_predict(self.kind, self.module, model_input)


def network_predict(kind: str, module: Any, model_input: Any) -> Any:
    """What a registered network's pyfunc computes (the table in this module's docstring), as numpy."""
    import numpy as np
    import torch

    values = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
    with torch.no_grad():
        if kind == "generator":
            classes = values.reshape(-1).long()
            noise = module.sample_noise(len(classes))
            images = module.to_unit_range(module(noise, classes))
            return images.reshape(len(classes), -1).numpy()
        if kind == "vae":
            return module.encode_mean(values.reshape(-1, 1, 32, 32)).numpy()
        return module(values).numpy()


def input_example(kind: str, module: Any, rows: int = 2) -> Any:
    """A small valid pyfunc input for `kind` (the version page's example and the signature's source)."""
    import numpy as np

    if kind == "generator":
        return np.arange(rows, dtype=np.int64)
    if kind == "vae":
        return np.full((rows, 32 * 32), 0.5, dtype=np.float32)
    return np.zeros((rows, module.decoder.project[0].in_features), dtype=np.float32)  # latents


mlflow.models.set_model(RegisteredNetwork())
