"""`crypson keygen | encrypt | decrypt`.

Keys come from a file (--key-file) or the CRYPSON_KEY environment variable, never from a
command-line argument, which any user could read in `ps`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from crypson.cipher.alphabet import AlphabetError
from crypson.cipher.envelope import CiphertextError, Envelope, from_bytes, from_json, to_bytes, to_json
from crypson.cipher.keys import KEY_ENV_VAR, SecretKey, key_from_env, read_key_file, write_key_file
from crypson.config import Config, ConfigError, load_config
from crypson.telemetry import disable_telemetry

KeyFileOption = Annotated[Path | None, typer.Option("--key-file", "-k", help=f"key file (else ${KEY_ENV_VAR})")]
ParamsOption = Annotated[Path, typer.Option(
    "--params", "-p", help="params file (cipher, tracking sections); built-in defaults when ./params.yaml is absent")]
ModelsOption = Annotated[str | None, typer.Option(
    "--models", help="registry alias (champion, candidate) or a folder holding models/ [params: cipher.models]")]
InputOption = Annotated[Path | None, typer.Option("--input", "-i", help="read from this file ('-' = stdin)")]
OutputOption = Annotated[Path | None, typer.Option("--output", "-o", help="write to this file (default stdout)")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _key(key_file: Path | None) -> SecretKey:
    if key_file is not None:
        return read_key_file(key_file)
    if KEY_ENV_VAR in os.environ:
        return key_from_env(os.environ)
    raise ValueError(f"no key: pass --key-file FILE or set {KEY_ENV_VAR} (create one with `crypson keygen`)")


def _config(params: Path) -> Config:
    """The params file; only the implicit default ./params.yaml may be absent (documented defaults)."""
    if params == Path("params.yaml") and not params.exists():
        return Config()
    return load_config(params)


def _models(spec: str, device: str):
    from crypson import model_files
    from crypson.cipher import loading

    model_files.refuse_pickle_loads()  # this process holds the key

    if Path(spec).is_dir():
        return loading.from_directory(Path(spec), device)
    disable_telemetry()
    return loading.from_registry(spec, device)


def _tracking(config: Config) -> None:
    import mlflow

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or config.tracking.tracking_uri)


def _read_input(text: str | None, source: Path | None) -> bytes:
    if text is not None:
        return text.encode()
    if source is None or str(source) == "-":
        return sys.stdin.buffer.read()
    return source.read_bytes()


def _write_output(payload: bytes, target: Path | None, private: bool = False) -> None:
    """stdout, or `target` written atomically; private: mode 0600 (decrypted text)."""
    if target is None:
        sys.stdout.buffer.write(payload)
        sys.stdout.buffer.flush()
    else:
        from crypson.files import atomic_write_bytes

        atomic_write_bytes(target, payload, private=private)


def keygen(key_file: Annotated[Path, typer.Option("--key-file", "-k", help="where to write the key")] = Path("crypson.key")) -> None:
    """Write a new random 256-bit key to a file only you can read (mode 0600); never overwrites."""
    try:
        write_key_file(key_file)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        _fail(str(error))
    typer.echo(f"wrote a new 256-bit key to {key_file} (mode 0600); keep it secret", err=True)


def encrypt(
    text: Annotated[str | None, typer.Argument(help="message (default: one message per line of --input or stdin)")] = None,
    key_file: KeyFileOption = None,
    input_file: InputOption = None,
    output: OutputOption = None,
    scheme: Annotated[str | None, typer.Option(help="mask scheme [params: cipher.scheme]")] = None,
    binary: Annotated[bool, typer.Option("--binary", help="compact binary instead of JSON lines (one message)")] = False,
    replace: Annotated[str | None, typer.Option(help="put this character in place of unsupported ones")] = None,
    insecure_baseline: Annotated[bool, typer.Option(
        "--insecure-baseline", help="allow the report's public-mask scheme, which anyone can decrypt")] = False,
    allow_misread: Annotated[bool, typer.Option(
        "--allow-misread", help="send characters the receiver's classifier would misread under every candidate "
                                "(a warning gives their count); otherwise nothing is sent")] = False,
    models: ModelsOption = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Encrypt text: one ciphertext per message (JSON lines, or --binary)."""
    from crypson.cipher.codec import encrypt as encrypt_texts
    from crypson.cipher.masks import get_scheme

    try:
        config = _config(params)
        scheme_name = scheme or config.cipher.scheme
        if scheme_name == "report" and not insecure_baseline:
            raise ValueError("the 'report' scheme masks with a public embedding: anyone with the code decrypts it. "
                             "It exists as a baseline for the attack suite; pass --insecure-baseline to use it anyway")
        key = _key(key_file)
        messages = _read_input(text, input_file).decode("utf-8").splitlines() if text is None else [text]
        if binary and len(messages) != 1:
            raise ValueError(f"--binary holds one message, got {len(messages)} lines; use JSON lines (the default)")
        _tracking(config)
        loaded = _models(models or config.cipher.models, "cpu")
        mask = get_scheme(scheme_name, loaded.vae.latent_dim, **config.cipher.scheme_settings)
        envelopes = encrypt_texts(loaded, messages, key, mask, replace, config.cipher.candidates, allow_misread)
    except (ConfigError, AlphabetError, LookupError, OSError, ValueError) as error:
        _fail(str(error))
    payload = to_bytes(envelopes[0]) if binary else "".join(to_json(e) + "\n" for e in envelopes).encode()
    _write_output(payload, output)


def _parse(data: bytes) -> list[Envelope]:
    if data.startswith(b"CRYP"):
        return [from_bytes(data)]
    lines = [line for line in data.decode("utf-8", errors="strict").splitlines() if line.strip()]
    if not lines:
        raise CiphertextError("no ciphertext in the input")
    return [from_json(line) for line in lines]


def decrypt(
    key_file: KeyFileOption = None,
    input_file: InputOption = None,
    output: OutputOption = None,
    images: Annotated[Path | None, typer.Option(
        "--images", help="also save the decoded handwriting as a PNG (mode 0600)")] = None,
    insecure_baseline: Annotated[bool, typer.Option(
        "--insecure-baseline", help="accept the report's public-mask scheme, which anyone can decrypt")] = False,
    models: ModelsOption = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Decrypt ciphertexts (JSON lines or binary); each must carry a valid tag under the key.

    The lines are the parts of one encryption: a missing, repeated or reordered line is refused.
    The plaintext (and --images) is written readable by you only when it goes to a file.
    """
    from crypson.cipher.codec import decode_images
    from crypson.cipher.codec import decrypt as decrypt_envelopes

    try:
        config = _config(params)
        key = _key(key_file)
        envelopes = _parse(_read_input(None, input_file))
        if not insecure_baseline and any(envelope.scheme == "report" for envelope in envelopes):
            raise ValueError("the ciphertext uses the 'report' scheme, whose mask is public: anyone with the code "
                             "reads it, so it proves nothing about the sender. Pass --insecure-baseline to accept it")
        _tracking(config)
        loaded = _models(models or config.cipher.models, "cpu")
        results = decrypt_envelopes(loaded, envelopes, key)
    except (ConfigError, CiphertextError, LookupError, OSError, ValueError) as error:
        _fail(str(error))
    if images is not None:
        _save_handwriting(images, [decode_images(loaded, result) for result in results])
    _write_output("".join(r.text + "\n" for r in results).encode(), output, private=True)


def _save_handwriting(path: Path, rows: list) -> None:
    """One row of decoded character images per message, padded to the longest message (a 0600 PNG)."""
    import torch

    from crypson.evaluate.figures import image_grid_png
    from crypson.files import atomic_write_bytes

    width = max((len(r) for r in rows), default=1) or 1
    grid = torch.cat([torch.cat([r, r.new_zeros(width - len(r), 1, 32, 32)]) for r in rows])
    atomic_write_bytes(path, image_grid_png(grid, width), private=True)


def serve_register(
    alias: Annotated[str, typer.Option("--models", help="registry alias whose versions to bundle")] = "champion",
    params: ParamsOption = Path("params.yaml"),
    allow_misread: Annotated[bool, typer.Option(
        "--allow-misread", help="the served encrypt sends characters that no candidate reads back (with a "
        "warning in the server's log) instead of answering an error row")] = False,
    operations: Annotated[str, typer.Option(
        "--operations", help="what the server answers: encrypt,decrypt (default), encrypt or decrypt")] = "encrypt,decrypt",
) -> None:
    """Register `crypson-cipher` (encrypt/decrypt over `mlflow models serve`) bundling the aliased models."""
    from crypson import tracking
    from crypson.cipher.serving import SERVED_NAME, register_service

    try:
        config = _config(params)
        disable_telemetry()
        # The bundle is logged in the pipeline's experiment, beside the models it bundles (not in Default).
        uri = os.environ.get("MLFLOW_TRACKING_URI") or config.tracking.tracking_uri
        mlflow_experiment = tracking.configure(uri, config.tracking.experiment, Path(config.tracking.artifact_dir))
        if config.cipher.scheme == "report":
            raise ValueError("refusing to serve the insecure 'report' baseline scheme")
        version = register_service(alias, config.cipher.scheme, config.cipher.scheme_settings, config.cipher.candidates,
                                   allow_misread, tuple(op.strip() for op in operations.split(",") if op.strip()),
                                   experiment_id=mlflow_experiment)
    except (ConfigError, LookupError, ValueError, tracking.TrackingUnavailableError) as error:
        _fail(str(error))
    typer.echo(f"registered {SERVED_NAME} v{version} (alias {alias}); serve it with:\n"
               f"  CRYPSON_KEY=... CRYPSON_SERVE_TOKEN=... mlflow models serve -m models:/{SERVED_NAME}@{alias} "
               "--env-manager local\n(clients send the token as params.token)")


def register(app: typer.Typer) -> None:
    app.command("keygen")(keygen)
    app.command("encrypt")(encrypt)
    app.command("decrypt")(decrypt)
    app.command("serve-register")(serve_register)
