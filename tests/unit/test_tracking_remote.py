"""Settings for a remote tracking server: the S3 endpoint guard, bounded retries, an unreachable server."""

import os
import socket

import mlflow
import pytest

from crypson import tracking


def test_s3_artifact_root_without_endpoint_is_refused():
    with pytest.raises(tracking.TrackingConfigError, match=r"s3://bucket/mlflow.*MLFLOW_S3_ENDPOINT_URL"):
        tracking.check_artifact_store("s3://bucket/mlflow", {"AWS_ACCESS_KEY_ID": "x"})
    with pytest.raises(tracking.TrackingConfigError):
        tracking.check_artifact_store("s3://bucket/mlflow", {"MLFLOW_S3_ENDPOINT_URL": ""})


@pytest.mark.parametrize("location, environ", [
    ("s3://bucket/mlflow", {"MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9000"}),
    ("file:///tmp/mlartifacts", {}),
    ("mlflow-artifacts:/1", {}),
    (None, {}),
])
def test_other_artifact_roots_pass(location, environ):
    tracking.check_artifact_store(location, environ)


def test_retry_defaults_do_not_override_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "9")
    for key in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(key, raising=False)
    tracking.bound_http_retries()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "9"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    assert os.environ["AWS_MAX_ATTEMPTS"] == "3"


def test_unreachable_server_is_a_clear_error(monkeypatch):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for key in tracking.HTTP_RETRY_DEFAULTS:  # whatever configure() sets is undone after the test
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{port}"
    previous = mlflow.get_tracking_uri()
    try:
        with pytest.raises(tracking.TrackingUnavailableError, match=rf"{uri} is unavailable after 0 retries"):
            tracking.configure(uri, "crypson")
    finally:
        mlflow.set_tracking_uri(previous)


def _chained(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception:
            raise outer  # implicit chaining, as MLflow's REST client does
    except Exception as error:
        return error


def test_connection_errors_are_recognised_through_their_chain():
    import botocore.exceptions
    import requests
    from mlflow.exceptions import MlflowException

    refused = requests.exceptions.ConnectionError("Max retries exceeded")
    assert tracking._is_connection_error(_chained(MlflowException("API request failed"), refused))
    endpoint = botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    assert tracking._is_connection_error(_chained(RuntimeError("upload failed"), endpoint))
    assert not tracking._is_connection_error(_chained(MlflowException("bad param"), ValueError("x")))
    assert not tracking._is_connection_error(KeyError("run_id"))
