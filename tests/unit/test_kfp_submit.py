"""`crypson pipeline submit` against kfp.Client, with the HTTP layer replaced at kfp_server_api's
REST client: the real client builds every request; the test checks their bodies."""

import datetime
import json
import subprocess
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import kfp  # noqa: E402
import kfp_server_api  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from crypson.kfp.cli import app  # noqa: E402
from crypson.kfp.submit import check_submission, image_commit_tag, submit, version_name  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "pipelines" / "crypson_pipeline.yaml"
API = "/apis/v2beta1"
pytestmark = pytest.mark.filterwarnings("ignore:This client only works:FutureWarning")


@dataclass
class Request:
    method: str
    path: str
    query: dict
    body: dict | None
    files: dict = field(default_factory=dict)


class Response:
    def __init__(self, payload: dict):
        self.status, self.reason, self.data = 200, "OK", json.dumps(payload).encode()

    def getheaders(self):
        return {"content-type": "application/json"}

    def getheader(self, name, default=None):
        return self.getheaders().get(name.lower(), default)


class FakeServer:
    """Answers the KFP v2beta1 API calls a submission makes; records each request."""

    def __init__(self, existing_pipeline: str | None = None):
        self.existing_pipeline = existing_pipeline
        self.requests: list[Request] = []

    def answer(self, method: str, path: str) -> dict:
        routes = {
            ("GET", f"{API}/healthz"): {"multi_user": False},
            ("GET", f"{API}/pipelines"): {"pipelines": [{"pipeline_id": self.existing_pipeline,
                                                         "display_name": "crypson"}]} if self.existing_pipeline else {},
            ("POST", f"{API}/pipelines/upload"): {"pipeline_id": "pipe-new", "display_name": "crypson"},
            ("POST", f"{API}/pipelines/upload_version"): {"pipeline_id": self.existing_pipeline or "pipe-new",
                                                          "pipeline_version_id": "ver-1"},
            ("GET", f"{API}/experiments"): {},
            ("POST", f"{API}/experiments"): {"experiment_id": "exp-1", "display_name": "crypson"},
            ("POST", f"{API}/runs"): {"run_id": "run-1", "display_name": "r"},
        }
        if (method, path) not in routes:
            raise AssertionError(f"unexpected request {method} {path}")
        return routes[(method, path)]

    def request(self, method, url, query_params=None, headers=None, body=None, post_params=None,
                _preload_content=True, _request_timeout=None):
        path = urllib.parse.urlparse(url).path
        files = {name: value for name, value in (post_params or []) if isinstance(value, tuple)}
        self.requests.append(Request(method, path, dict(query_params or []), body, files))
        return Response(self.answer(method, path))

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]

    def only(self, method: str, path: str) -> Request:
        (found,) = [r for r in self.requests if (r.method, r.path) == (method, f"{API}{path}")]
        return found


@pytest.fixture
def server(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp/context.json from the developer's machine
    fake = FakeServer()
    monkeypatch.setattr(kfp_server_api.rest.RESTClientObject, "request",
                        lambda self, *args, **kwargs: fake.request(*args, **kwargs))
    return fake


def test_first_submission_creates_pipeline_then_version_then_run(server):
    client = kfp.Client(host="http://kfp.test")
    arguments = {"params": '{"seed":1}', "git_commit": "abc"}
    done = submit(client, PACKAGE, pipeline_name="crypson", version="crypson-abc-1", experiment="crypson",
                  run_name="nightly", arguments=arguments)
    assert (done.pipeline_id, done.version_id, done.experiment_id, done.run_id) == ("pipe-new", "ver-1", "exp-1",
                                                                                  "run-1")
    assert server.calls() == [("GET", f"{API}/healthz"), ("GET", f"{API}/pipelines"),
                              ("POST", f"{API}/pipelines/upload"), ("POST", f"{API}/pipelines/upload_version"),
                              ("GET", f"{API}/experiments"), ("POST", f"{API}/experiments"),
                              ("POST", f"{API}/runs")]
    lookup = json.loads(server.only("GET", "/pipelines").query["filter"])
    assert lookup["predicates"][0]["stringValue"] == "crypson"
    for path in ("/pipelines/upload", "/pipelines/upload_version"):
        _, payload, _ = server.only("POST", path).files["uploadfile"]
        assert payload == PACKAGE.read_bytes(), path
    assert server.only("POST", "/pipelines/upload").query["name"] == "crypson"
    version = server.only("POST", "/pipelines/upload_version").query
    assert (version["name"], version["pipelineid"]) == ("crypson-abc-1", "pipe-new")
    assert server.only("POST", "/experiments").body["display_name"] == "crypson"
    run = server.only("POST", "/runs").body
    assert run["display_name"] == "nightly" and run["experiment_id"] == "exp-1"
    assert run["pipeline_version_reference"] == {"pipeline_id": "pipe-new", "pipeline_version_id": "ver-1"}
    assert run["runtime_config"]["parameters"] == arguments
    assert "pipeline_spec" not in run  # the run references the uploaded version, no inline copy


def test_later_submissions_add_a_version_to_the_existing_pipeline(server):
    server.existing_pipeline = "pipe-old"
    done = submit(kfp.Client(host="http://kfp.test"), PACKAGE, pipeline_name="crypson", version="v2",
                  experiment="crypson", run_name="r", arguments={})
    assert ("POST", f"{API}/pipelines/upload") not in server.calls()
    assert server.only("POST", "/pipelines/upload_version").query["pipelineid"] == "pipe-old"
    assert done.pipeline_id == "pipe-old"


def test_missing_package_is_refused_before_any_request(server, tmp_path):
    with pytest.raises(FileNotFoundError, match="crypson pipeline compile"):
        submit(object(), tmp_path / "none.yaml", pipeline_name="crypson", version="v", experiment="e",
               run_name="r", arguments={})
    assert server.requests == []


def test_version_names_are_unique_per_second_and_name_the_commit():
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert version_name("crypson", "0123456789abcdef-dirty", when) == "crypson-0123456789ab-20260102-030405"
    assert version_name("crypson", "", when) == "crypson-nocommit-20260102-030405"


def test_cli_submits_params_commit_and_the_resolved_data_revision(server):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    if not head:
        pytest.skip("not a git checkout")
    image = f"registry.example:5000/crypson/crypson:{head}@sha256:{'ab' * 32}"
    result = CliRunner().invoke(app, ["submit", "--host", "http://kfp.test", "--repo", str(REPO), "--image", image,
                                      "--preset", "tiny", "--data-repo", "https://git.example/crypson.git",
                                      "--dvc-remote", "store", "--allow-dirty"])  # a developer's tree may be dirty
    assert result.exit_code == 0, result.output
    _, package, _ = server.only("POST", "/pipelines/upload_version").files["uploadfile"]
    spec, _ = yaml.safe_load_all(package)
    executors = spec["deploymentSpec"]["executors"].values()
    assert {executor["container"]["image"] for executor in executors} == {image}  # compiled for the image
    assert all({"name": "CRYPSON_IMAGE", "value": image} in executor["container"]["env"] for executor in executors)
    arguments = server.only("POST", "/runs").body["runtime_config"]["parameters"]
    assert arguments["data_rev"] == head and arguments["data_repo_url"] == "https://git.example/crypson.git"
    assert arguments["dvc_remote"] == "store" and arguments["git_commit"].startswith(head)
    params = json.loads(arguments["params"])
    assert params["cgan"]["epochs"] == yaml.safe_load((REPO / "presets" / "tiny.yaml").read_text())["cgan"]["epochs"]
    assert "run-1" in result.output


def test_cli_refuses_an_unknown_data_revision_without_contacting_the_server(server):
    result = CliRunner().invoke(app, ["submit", "--host", "http://kfp.test", "--repo", str(REPO), "--allow-dirty",
                                      "--allow-image-mismatch",
                                      "--data-repo", "https://git.example/crypson.git", "--data-rev", "no-such-rev"])
    assert result.exit_code == 2
    assert "'no-such-rev' is not a commit" in result.output
    assert server.requests == []


def git_repo(folder: Path) -> str:
    """A one-commit repository with a tracked file; returns its HEAD."""
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (folder / "params.yaml").write_text("seed: 1\n")
    git("add", "params.yaml")
    git("commit", "-qm", "one")
    return git("rev-parse", "HEAD")


def test_a_submission_needs_a_clean_tree_and_heads_image_by_digest(tmp_path):
    head = git_repo(tmp_path)
    digest = f"@sha256:{'0f' * 32}"
    assert check_submission(tmp_path, f"ghcr.io/crypson/crypson:{head}{digest}") == head
    assert check_submission(tmp_path, f"localhost:5000/crypson:{head[:12]}{digest}") == head  # a port is no tag
    with pytest.raises(ValueError, match="is not referenced by digest: pass --image REPOSITORY:" + head[:12]):
        check_submission(tmp_path, f"ghcr.io/crypson/crypson:{head}")
    with pytest.raises(ValueError, match=r"tagged '0\.1\.0', not HEAD's commit " + head):
        check_submission(tmp_path, f"ghcr.io/crypson/crypson:0.1.0{digest}")
    with pytest.raises(ValueError, match="tagged 'nothing'"):
        check_submission(tmp_path, f"localhost:5000/crypson{digest}")
    assert check_submission(tmp_path, "ghcr.io/crypson/crypson:0.1.0", allow_image_mismatch=True) == head

    (tmp_path / "params.yaml").write_text("seed: 2\n")
    (tmp_path / "untracked.txt").write_text("not part of the code\n")
    with pytest.raises(ValueError, match=r"uncommitted changes to tracked files \(params.yaml\).*--allow-dirty"):
        check_submission(tmp_path, f"ghcr.io/crypson/crypson:{head}{digest}")
    assert check_submission(tmp_path, f"ghcr.io/crypson/crypson:{head}{digest}", allow_dirty=True) == head


def test_the_image_tag_is_read_past_a_registry_port_and_before_the_digest():
    assert image_commit_tag("localhost:5000/a/b:abc@sha256:ff") == "abc"
    assert image_commit_tag("localhost:5000/a/b@sha256:ff") == ""
    assert image_commit_tag("b:1.0") == "1.0"


def test_the_cli_refuses_the_default_image_before_contacting_the_server(server):
    result = CliRunner().invoke(app, ["submit", "--host", "http://kfp.test", "--repo", str(REPO), "--allow-dirty"])
    assert result.exit_code == 2
    assert "'ghcr.io/crypson/crypson:0.1.0' is not referenced by digest" in result.output
    assert server.requests == []
