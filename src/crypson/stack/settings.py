"""The stack's settings (folder, ports, bucket) and its generated credentials."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
DEFAULT_PORT_BASE = 15430
SERVICES = ("postgres", "s3", "mlflow")  # start order; stopped in reverse
DB_USER, DB_NAME = "crypson", "mlflow"
# SeaweedFS opens a gRPC port at each HTTP port + 10000.
GRPC_OFFSET = 10000


class StackError(RuntimeError):
    """A service could not be started or stopped; the message says which and where its log is."""


@dataclass(frozen=True)
class StackConfig:
    """Where the stack keeps its data and which ports it uses (base .. base+6, and +10000 for gRPC)."""

    root: Path
    port_base: int = DEFAULT_PORT_BASE
    bucket: str = "crypson"

    def port(self, service: str) -> int:
        offsets = {"postgres": 0, "mlflow": 1, "s3": 2, "weed_master": 3, "weed_volume": 4,
                   "weed_filer": 5, "weed_admin": 6}
        return self.port_base + offsets[service]

    @property
    def tracking_uri(self) -> str:
        return f"http://{HOST}:{self.port('mlflow')}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.port('s3')}"

    @property
    def artifact_root(self) -> str:
        return f"s3://{self.bucket}/mlflow"

    @property
    def dvc_remote_url(self) -> str:
        return f"s3://{self.bucket}/dvc"


def config_from_env(environ: Mapping[str, str], default_root: Path) -> StackConfig:
    """CRYPSON_STACK_DIR, CRYPSON_STACK_PORT_BASE and CRYPSON_STACK_BUCKET override the defaults."""
    raw_base = environ.get("CRYPSON_STACK_PORT_BASE", str(DEFAULT_PORT_BASE))
    if not raw_base.isdigit() or not 1024 <= int(raw_base) <= 65535 - GRPC_OFFSET - 6:
        raise StackError(f"CRYPSON_STACK_PORT_BASE={raw_base!r}: expected an integer in 1024..{65535 - GRPC_OFFSET - 6}")
    bucket = environ.get("CRYPSON_STACK_BUCKET", "crypson")
    root = Path(environ.get("CRYPSON_STACK_DIR", str(default_root))).resolve()
    return StackConfig(root=root, port_base=int(raw_base), bucket=bucket)


MLFLOW_USER = "crypson"  # the tracking server's admin login (MLflow basic auth)


@dataclass(frozen=True)
class Credentials:
    access_key: str  # S3
    secret_key: str
    db_password: str  # PostgreSQL
    mlflow_password: str  # the MLflow server's login for MLFLOW_USER
    flask_secret: str  # signs the MLflow server's sessions and CSRF tokens (shared by its workers)


def _fresh_secrets() -> dict[str, str]:
    return {"access_key": "CRYPSON" + secrets.token_hex(8).upper(), "secret_key": secrets.token_urlsafe(30),
            "db_password": secrets.token_urlsafe(24), "mlflow_password": secrets.token_urlsafe(24),
            "flask_secret": secrets.token_urlsafe(32)}


def credentials(config: StackConfig) -> Credentials:
    """Load the stack's credentials, generating them on first use into a 0600 file (and any that a
    stack made by an older version lacks: the existing ones are kept)."""
    path = config.root / "credentials.json"
    stored = {}
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise StackError(f"{path} is readable by others (mode {oct(path.stat().st_mode & 0o777)}); chmod 600 it")
        stored = json.loads(path.read_text())
    if not stored.keys() >= Credentials.__dataclass_fields__.keys():
        config.root.mkdir(parents=True, exist_ok=True)
        stored = {**_fresh_secrets(), **stored}
        write_private(path, json.dumps(stored).encode())
    return Credentials(**{key: stored[key] for key in Credentials.__dataclass_fields__})


def write_private(path: Path, payload: bytes) -> None:
    """Create `path` with mode 0600 from the start (never briefly world-readable), then rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(handle, "wb") as stream:
        stream.write(payload)
    os.replace(temporary, path)


def client_env(config: StackConfig) -> dict[str, str]:
    """What a client (the pipeline, DVC, boto3) needs in its environment to use the stack."""
    creds = credentials(config)
    return {"MLFLOW_TRACKING_URI": config.tracking_uri, "MLFLOW_S3_ENDPOINT_URL": config.s3_endpoint,
            "MLFLOW_TRACKING_USERNAME": MLFLOW_USER, "MLFLOW_TRACKING_PASSWORD": creds.mlflow_password,
            "AWS_ACCESS_KEY_ID": creds.access_key, "AWS_SECRET_ACCESS_KEY": creds.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1"}


