"""Concurrent registration: real processes against the stack's server, no mocks.

Each process does what a pipeline's train + promote stages do for one model: log a model, load it
back, register a version as `candidate`, then move `champion` only if its gate passed. They wait
on a shared start signal so that the registrations overlap.
"""

import json
import subprocess
import sys
import textwrap
import time

import mlflow
import pytest

from tests.integration.helpers import REPO

pytestmark = pytest.mark.integration
MODEL = "crypson-concurrency-probe"

WORKER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import mlflow, torch
    from crypson import tracking

    go, passed, out = Path(sys.argv[1]), sys.argv[2] == "pass", Path(sys.argv[3])
    experiment = tracking.configure(sys.argv[4], "crypson-concurrency")
    from crypson import model_files

    hparams = {"latent_dim": 2, "channels": [2, 2, 4, 4], "num_classes": 3, "hidden": 4, "dropout": 0.0}
    model = model_files.build("classifier", hparams).eval()
    weights = out.with_suffix(".pt")
    model_files.save_model(weights, "classifier", hparams, model.state_dict(), ("A", "B", "C"))
    out.with_suffix(".ready").touch()
    while not go.exists():
        time.sleep(0.05)
    with mlflow.start_run(experiment_id=experiment):
        uri = tracking.log_network(model, weights, "classifier", "probe", (torch.ones(1, 2),), lambda m, p: m(*p)).model_uri
        version = tracking.register_version(uri, sys.argv[5], {"gate": "pass" if passed else "fail"},
                                            "Concurrency probe: a tiny latent classifier.")
    if passed:
        tracking.set_champion({sys.argv[5]: version})
    out.write_text(json.dumps({"version": version, "passed": passed}))
""")


def test_concurrent_registrations_get_distinct_versions_and_a_gated_champion(services, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    go = tmp_path / "go"
    gates = ["pass", "fail", "pass", "fail"]
    outputs = [tmp_path / f"worker-{i}.json" for i in range(len(gates))]
    workers = [subprocess.Popen([sys.executable, str(script), str(go), gate, str(out), services.tracking_uri, MODEL],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for gate, out in zip(gates, outputs)]
    try:
        deadline = time.monotonic() + 240  # every worker has imported torch and MLflow: start them together
        while not all(out.with_suffix(".ready").exists() for out in outputs):
            dead = [w for w in workers if w.poll() is not None]
            assert not dead, f"a worker exited before it was ready: {dead[0].communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "a worker did not get ready in 240 s"
            time.sleep(0.1)
        go.touch()
        for worker in workers:
            _, stderr = worker.communicate(timeout=240)
            assert worker.returncode == 0, stderr[-3000:]
    finally:  # a failure above must not leave the other workers waiting for `go` for ever
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    results = [json.loads(out.read_text()) for out in outputs]
    versions = [r["version"] for r in results]
    assert sorted(versions, key=int) == [str(v) for v in range(1, len(gates) + 1)]  # distinct, none lost
    client = mlflow.MlflowClient(services.tracking_uri)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.tags["gate"] == "pass"
    assert champion.version in {r["version"] for r in results if r["passed"]}
    for version in versions:
        assert mlflow.models.get_model_info(f"models:/{MODEL}/{version}").flavors  # artifacts in the bucket
