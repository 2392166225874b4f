"""`crypson encrypt | decrypt` in-process (typer's runner) on a small untrained models folder: the
stream binding, hostile input, key files and output modes. One-line errors, exit status 2, no plaintext."""

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from crypson import model_files
from crypson.cli import app

CLASSES = tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt")
VAE_PARAMS = {"latent_dim": 8, "channels": [4, 4, 8, 8]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A models/ folder as `dvc repro` writes it, with tiny untrained networks and their versions."""
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    specs = {
        ("cgan", "generator"): {"num_classes": len(CLASSES), "noise_dim": 8, "width": 4, "conditioning": "concat",
                                "label_dim": 4},
        ("vae", "vae"): VAE_PARAMS,
        ("classifier", "classifier"): {**VAE_PARAMS, "num_classes": len(CLASSES), "hidden": 8, "dropout": 0.0},
    }
    for (stage, kind), hparams in specs.items():
        module = model_files.build(kind, hparams)
        model_files.save_model(root / "models" / stage / f"{kind}.pt", kind, hparams, module.state_dict(), CLASSES)
        (root / "models" / stage / "registration.json").write_text(
            json.dumps({"name": f"crypson-{stage}", "version": "1"}))
    return root


@pytest.fixture
def cli(folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the built-in defaults
    runner = CliRunner()
    assert runner.invoke(app, ["keygen", "--key-file", "k"]).exit_code == 0

    def invoke(*args: str, stdin: bytes | str | None = None, key: str | None = "k"):
        options = ["--models", str(folder)] if args[0] in ("encrypt", "decrypt") else []
        keyed = ["--key-file", key] if key else []
        return runner.invoke(app, [*args, *keyed, *options], input=stdin)

    return invoke


def _one_line_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


def test_lines_of_one_encryption_decrypt_only_whole_and_in_order(cli):
    sent = cli("encrypt", "--allow-misread", stdin="ONE\nTWO\nSIX\n")
    assert sent.exit_code == 0, sent.output
    lines = sent.stdout.splitlines(keepends=True)
    assert len(lines) == 3
    whole = cli("decrypt", stdin="".join(lines))
    assert whole.exit_code == 0 and len(whole.stdout.splitlines()) == 3
    for edited, message in ((lines[::2], "line 2 is part 3"), ([lines[1], lines[0], lines[2]], "line 1 is part 2"),
                            (lines[:2], "without its final part"), (lines + lines[-1:], "1 more follow")):
        _one_line_error(cli("decrypt", stdin="".join(edited)), message)


@pytest.mark.parametrize(("hostile", "message"), [
    ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
    ("{" + ",".join(['"a":1'] * 8000) + "}", "repeated field(s): a"),
    ("x" * (2 << 20), "over the limit"),
    ("\xff\xfe not utf-8", "not valid JSON"),
])
def test_hostile_input_gets_a_one_line_error(cli, hostile, message):
    _one_line_error(cli("decrypt", stdin=hostile), message)


def test_key_file_must_be_a_regular_file_you_own(cli, tmp_path):
    os.mkfifo(tmp_path / "fifo", 0o600)
    _one_line_error(cli("encrypt", "AB", key=str(tmp_path / "fifo")), "is not a regular file")
    (tmp_path / "link").symlink_to(tmp_path / "k")
    _one_line_error(cli("encrypt", "AB", key=str(tmp_path / "link")), "is a symbolic link")


def test_decrypted_text_and_images_are_private_and_report_scheme_needs_consent(cli, tmp_path):
    sent = cli("encrypt", "HI", "--allow-misread").stdout
    done = cli("decrypt", "--output", "plain.txt", "--images", "plain.png", stdin=sent)
    assert done.exit_code == 0, done.output
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o600 and len((tmp_path / "plain.txt").read_text()) == 3
    assert (tmp_path / "plain.png").stat().st_mode & 0o777 == 0o600
    public = cli("encrypt", "HI", "--scheme", "report", "--insecure-baseline", "--allow-misread")
    assert public.exit_code == 0, public.output
    _one_line_error(cli("decrypt", stdin=public.stdout), "'report' scheme")
    assert cli("decrypt", "--insecure-baseline", stdin=public.stdout).exit_code == 0
