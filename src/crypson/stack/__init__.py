"""A local production-like stack: PostgreSQL, an S3 store (SeaweedFS) and an MLflow server.

Everything listens on 127.0.0.1 and keeps its data under one folder (`.stack/` by default), so
a developer or a test session gets the production setup of DESIGN.md without a cluster:
MLflow's backend store in PostgreSQL, its artifacts and the DVC remote in an S3 bucket.
Services are started in the background and stopped by the PID they were started with; `up` and
`down` are idempotent. Credentials are generated once into the folder (mode 0600) and are only
ever printed by `crypson stack env`, for the user's own shell.
"""

from crypson.stack.cli import app
from crypson.stack.services import configure_dvc_remote, down, status, up
from crypson.stack.settings import (DEFAULT_PORT_BASE, GRPC_OFFSET, HOST, SERVICES, Credentials, StackConfig,
                                    StackError, client_env, config_from_env, credentials)

__all__ = ["DEFAULT_PORT_BASE", "GRPC_OFFSET", "HOST", "SERVICES", "Credentials", "StackConfig", "StackError", "app",
           "client_env", "config_from_env", "configure_dvc_remote", "credentials", "down", "status", "up"]
