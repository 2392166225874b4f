"""The local stack's settings and credentials (no services started here: tests/integration does that)."""

import json
from pathlib import Path

import pytest

from crypson import stack


def test_config_from_env_defaults_and_overrides(tmp_path):
    default = stack.config_from_env({}, tmp_path / ".stack")
    assert default.root == (tmp_path / ".stack").resolve() and default.port_base == stack.DEFAULT_PORT_BASE
    custom = stack.config_from_env({"CRYPSON_STACK_DIR": str(tmp_path / "s"), "CRYPSON_STACK_PORT_BASE": "20000",
                                    "CRYPSON_STACK_BUCKET": "b"}, tmp_path)
    assert (custom.port("postgres"), custom.port("mlflow"), custom.port("s3")) == (20000, 20001, 20002)
    assert custom.tracking_uri == "http://127.0.0.1:20001" and custom.dvc_remote_url == "s3://b/dvc"


@pytest.mark.parametrize("base", ["abc", "80", "60000"])
def test_bad_port_base_is_named(base, tmp_path):
    with pytest.raises(stack.StackError, match=rf"CRYPSON_STACK_PORT_BASE='{base}'"):
        stack.config_from_env({"CRYPSON_STACK_PORT_BASE": base}, tmp_path)


def test_credentials_generated_once_private(tmp_path):
    config = stack.StackConfig(root=tmp_path / "s")
    first, second = stack.credentials(config), stack.credentials(config)
    assert first == second and len(first.secret_key) >= 30 and first.secret_key != first.db_password
    assert (config.root / "credentials.json").stat().st_mode & 0o777 == 0o600
    other = stack.credentials(stack.StackConfig(root=tmp_path / "t"))
    assert other.secret_key != first.secret_key  # generated, never a constant
    env = stack.client_env(config)
    assert env["AWS_SECRET_ACCESS_KEY"] == first.secret_key and env["MLFLOW_S3_ENDPOINT_URL"] == config.s3_endpoint
    assert env["MLFLOW_TRACKING_USERNAME"] == "crypson" and env["MLFLOW_TRACKING_PASSWORD"] == first.mlflow_password
    assert len({first.secret_key, first.db_password, first.mlflow_password, first.flask_secret}) == 4


def test_an_older_stack_gains_the_new_secrets_and_keeps_its_own(tmp_path):
    old = {"access_key": "CRYPSONAB", "secret_key": "s" * 40, "db_password": "d" * 32}
    stack.settings.write_private(tmp_path / "credentials.json", json.dumps(old).encode())
    creds = stack.credentials(stack.StackConfig(root=tmp_path))
    assert (creds.access_key, creds.secret_key, creds.db_password) == tuple(old.values())
    assert len(creds.mlflow_password) >= 24 and creds == stack.credentials(stack.StackConfig(root=tmp_path))
    assert (tmp_path / "credentials.json").stat().st_mode & 0o777 == 0o600


def test_readable_credentials_are_refused(tmp_path):
    config = stack.StackConfig(root=tmp_path)
    stack.credentials(config)
    (tmp_path / "credentials.json").chmod(0o644)
    with pytest.raises(stack.StackError, match="readable by others"):
        stack.credentials(config)


def test_down_when_nothing_runs_is_fine(tmp_path):
    config = stack.StackConfig(root=tmp_path)
    assert stack.down(config) == []
    assert stack.status(config) == {"postgres": False, "s3": False, "mlflow": False}


def test_unknown_service_is_named(tmp_path):
    with pytest.raises(stack.StackError, match=r"\['minio'\].*postgres, s3, mlflow"):
        stack.up(stack.StackConfig(root=Path(tmp_path)), ("minio",))


def test_port_held_by_another_program_is_refused(tmp_path):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = stack.StackConfig(root=tmp_path, port_base=port - 1)  # mlflow's port = base + 1
        with pytest.raises(stack.StackError, match=rf"127.0.0.1:{port} \(mlflow\)"):
            stack.up(config, ("mlflow",))
