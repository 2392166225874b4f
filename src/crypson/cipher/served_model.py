"""What `mlflow models serve` runs for `crypson-cipher`: MLflow's "models from code", no pickle.

`serving.register_service` logs this file as the model's code; MLflow executes it when the model
loads, and it only names the class from the installed crypson package. The networks come from the
bundled weights files, checked against their SHA-256 and loaded weights-only.
"""

import mlflow

from crypson.cipher.serving import CipherService

mlflow.models.set_model(CipherService())
