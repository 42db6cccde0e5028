"""The MLflow server of docker/compose.yaml, started natively with the exact command and environment of
its compose service, on real servers in place of the stack's others: a throwaway PostgreSQL for
`postgres`, moto's S3 server for `minio`. Only what must differ on one machine is changed: the listen
address and port, the other servers' addresses, the auth database's folder, and 1 server process
rather than MLflow's default 4 (2 cores).

Against it: the server boots and asks for credentials; a real `moco pretrain` whose environment holds
the admin user and password (as the stack's Ray nodes do) logs a run, registers the encoder and puts
its weights in the artifact bucket through the server; `moco encoders pull` without them says so.
Also: docker/check-env.py refuses the placeholders of docker/.env.example and takes real secrets.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
import yaml

from service.cli import EXIT_FAIL, EXIT_OK, main

from .conftest import REPO
from .servers import PostgresUnavailable, environ_of, free_ports, postgres, stop_tree, tree_of

pytestmark = pytest.mark.slow

DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
CHECK_ENV = DOCKER / "check-env.py"
NAME = "stackboot"  # the experiment's name: its model is moco-stackboot

# ---------------------------------------------------------------------------------------------
# docker/compose.yaml as compose reads it, with an env file of real secrets


def generated_env() -> dict[str, str]:
    """docker/.env.example with every change-me placeholder replaced by a random value, as a user makes
    docker/.env (the other values, the user names among them, kept)."""
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if m := re.match(r"^([A-Z_]+)=(.*)$", line):
            env[m[1]] = secrets.token_hex(24) if "change-me" in m[2] else m[2]
    return env


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:\?|:-)([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution: ``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}`` (an unset or
    empty VAR is an error) and ``$$``, in every string of ``value``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m[0] == "$$":
            return "$"
        name, op, arg = m[1], m[2], m[3]
        got = env.get(name, "")
        if op == ":?" and not got:
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" and not got else got

    return _VAR.sub(sub, value)


def compose_service(name: str, env: dict[str, str]) -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text())["services"][name], env)


def swap(items: list[str], old: str, new: str) -> list[str]:
    """``items`` with ``old`` replaced by ``new``; ``old`` must be there (the compose file changed if not)."""
    assert old in items, f"{old!r} not in {items}"
    return [new if item == old else item for item in items]


def replaced(text: str, old: str, new: str) -> str:
    assert old in text, f"{old!r} not in {text!r}"
    return text.replace(old, new)


# ---------------------------------------------------------------------------------------------
# the compose mlflow service, natively


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> float:
    """Seconds until ``url`` answers 200; fails with the server's log tail when it exits or is late."""
    start = time.monotonic()
    while True:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return time.monotonic() - start
        except requests.RequestException:
            pass
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"mlflow server not healthy after {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def stack(s3_endpoint, tmp_path_factory):
    env = generated_env()
    service = compose_service("mlflow", env)
    base = Path(tempfile.mkdtemp(prefix="mocostack-", dir="/tmp"))
    try:
        with postgres(user="mlflow", db="mlflow", password=env["POSTGRES_PASSWORD"]) as pg:
            import boto3

            # the compose `buckets` service: the artifact bucket, with the stack's MinIO keys
            s3 = boto3.client(
                "s3",
                endpoint_url=s3_endpoint,
                aws_access_key_id=env["MINIO_ROOT_USER"],
                aws_secret_access_key=env["MINIO_ROOT_PASSWORD"],
                region_name="us-east-1",
            )
            if "mlflow" not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
                s3.create_bucket(Bucket="mlflow")

            server_env = dict(service["environment"])
            server_env["MLFLOW_BACKEND_STORE_URI"] = replaced(
                server_env["MLFLOW_BACKEND_STORE_URI"], "@postgres:5432/", f"@{pg.host}:{pg.port}/"
            )
            assert server_env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
            server_env["MLFLOW_S3_ENDPOINT_URL"] = s3_endpoint
            # the image's copy of docker/mlflow-auth.ini, its user store moved from the volume to here
            assert server_env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"
            assert (
                "COPY mlflow-auth.ini /etc/mlflow/basic_auth.ini"
                in (DOCKER / "mlflow.Dockerfile").read_text()
            )
            ini = base / "basic_auth.ini"
            ini.write_text(
                replaced(
                    (DOCKER / "mlflow-auth.ini").read_text(),
                    "database_uri = sqlite:////mlflow-auth/basic_auth.db",
                    f"database_uri = sqlite:///{base / 'basic_auth.db'}",
                )
            )
            server_env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
            (base / "home").mkdir()
            # the rest of the container's environment: python:3.11-slim's (no AWS_*, no MLFLOW_* of ours)
            server_env.update(
                PATH=f"{Path(sys.executable).parent}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
                HOME=str(base / "home"),
                LANG="C.UTF-8",
            )

            (port,) = free_ports(1)
            command = swap(service["command"], "--host=0.0.0.0", "--host=127.0.0.1")
            command = swap(command, "--port=5000", f"--port={port}")
            command = swap(command, "mlflow", str(Path(sys.executable).parent / "mlflow"))
            # this machine's size: 1 server process, not MLflow's default 4 (which on 2 busy cores take
            # a minute to start, uvicorn's supervisor killing the slow ones)
            assert not any(c.startswith("--workers") for c in command)
            command.append("--workers=1")
            log_path = tmp_path_factory.mktemp("stack") / "mlflow.log"  # kept: read it after a failure
            with open(log_path, "w") as log:
                proc = subprocess.Popen(
                    command,
                    env=server_env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    cwd=base / "home",
                )
            try:  # stopped before its PostgreSQL
                uri = f"http://127.0.0.1:{port}"
                boot_s = wait_healthy(uri + "/health", proc, log_path, timeout_s=150)
                yield SimpleNamespace(
                    uri=uri,
                    env=env,
                    user=env["MLFLOW_ADMIN_USER"],
                    password=env["MLFLOW_ADMIN_PASSWORD"],
                    s3=s3,
                    log=log_path,
                    boot_s=boot_s,
                )
            finally:
                # the server's job queue lives in a folder of its own in /dev/shm, which it leaves behind
                queues = {environ_of(pid).get("_MLFLOW_HUEY_STORAGE_PATH") for pid in tree_of(proc.pid)}
                stop_tree(proc.pid, grace_s=1.0)  # a throwaway server: no graceful shutdown needed
                for queue in queues - {None}:
                    shutil.rmtree(queue, ignore_errors=True)
    except PostgresUnavailable as e:
        pytest.skip(f"the compose MLflow server needs PostgreSQL here: {e}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def pretrained(stack, digits_root, tmp_path_factory):
    """`moco pretrain` of the digits experiment, a few steps, in its own process and with its own local
    Ray cluster, whose environment holds the MLflow user and password and no S3 keys (the server serves
    the artifacts), as a job on the stack's Ray nodes has."""
    tmp = tmp_path_factory.mktemp("stackboot")
    scratch = Path(tempfile.mkdtemp(prefix="mocosb-", dir="/tmp"))  # Ray's sockets: a short path
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "AWS_"))}
    (tmp / "home").mkdir()
    env.update(
        HOME=str(tmp / "home"),  # its own Ray token
        TMPDIR=str(scratch),  # its own Ray cluster: never another one of this machine
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
        MLFLOW_TRACKING_USERNAME=stack.user,
        MLFLOW_TRACKING_PASSWORD=stack.password,
    )
    sets = [f"name={NAME}", f"data.root={digits_root}", "data.num_workers=0", "optim.epochs=1"]
    sets += ["run.max_steps_per_epoch=2", "eval.knn_every_epochs=0", f"run.storage_path={tmp / 'runs'}"]
    cmd = [sys.executable, "-m", "service.cli", "pretrain", str(REPO / "experiments" / "digits.yaml")]
    cmd += [a for s in sets for a in ("--set", s)] + ["--tracking-uri", stack.uri]
    log_path = tmp / "pretrain.log"
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        code = proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        stop_tree(proc.pid)
        own_cluster = (scratch / "ray").is_dir()
        shutil.rmtree(scratch, ignore_errors=True)
    took = time.monotonic() - start
    out = log_path.read_text()
    assert code == 0, f"moco pretrain exited {code}:\n{out[-4000:]}\nserver:\n{stack.log.read_text()[-2000:]}"
    assert own_cluster, "the run did not start its own Ray cluster"
    return SimpleNamespace(out=out, took=took, tmp=tmp)


# ---------------------------------------------------------------------------------------------
# tests


def test_check_env_refuses_the_example_and_takes_real_secrets(tmp_path):
    spec = importlib.util.spec_from_file_location("check_env", CHECK_ENV)
    check_env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_env)
    # it checks every variable that docker/compose.yaml requires
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text()))
    assert set(check_env.SECRETS) | set(check_env.NAMES) == required

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(CHECK_ENV), *args], capture_output=True, text=True, timeout=30, env=env
        )

    example = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z_]+=", line)
    )
    refused = run(str(ENV_EXAMPLE))
    assert refused.returncode == 1
    lines = refused.stderr.splitlines()
    placeholders = [k for k, v in example.items() if "change-me" in v]
    assert set(placeholders) == set(check_env.SECRETS)
    for name in placeholders:
        (line,) = [ln for ln in lines if f" {name} " in ln]  # one line per variable
        assert "placeholder" in line
        assert example[name] not in refused.stdout + refused.stderr  # the name, never the value

    good = generated_env()
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in good.items()))
    taken = run(str(env_file))
    assert taken.returncode == 0, taken.stderr
    # in the container: the variables compose passes to the check-env service
    plain = {"PATH": os.environ["PATH"]}
    assert run(env={**plain, **compose_service("check-env", good)["environment"]}).returncode == 0

    weak = {**good, "POSTGRES_PASSWORD": "abc123", "MINIO_ROOT_PASSWORD": "x/" * 12, "MLFLOW_ADMIN_USER": ""}
    del weak["RAY_AUTH_TOKEN"]
    out = run(env={**plain, **weak})
    assert out.returncode == 1
    bad = [ln for ln in out.stderr.splitlines() if not ln.startswith("check-env: fix these")]
    assert len(bad) == 4, out.stderr
    for name, why in (
        ("POSTGRES_PASSWORD", "shorter than 16"),
        ("MINIO_ROOT_PASSWORD", "letters and digits only"),
        ("MLFLOW_ADMIN_USER", "empty"),
        ("RAY_AUTH_TOKEN", "not set"),
    ):
        assert any(f" {name} " in ln and why in ln for ln in bad), (name, out.stderr)
    assert "abc123" not in out.stderr and "x/x/" not in out.stderr


def test_the_compose_mlflow_server_boots_and_asks_for_credentials(stack):
    print(f"the compose MLflow server was healthy after {stack.boot_s:.1f} s")
    search = f"{stack.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(search, timeout=60).status_code == 401
    assert requests.get(search, auth=(stack.user, "wrong" + stack.password), timeout=60).status_code == 401
    assert requests.get(search, auth=(stack.user, stack.password), timeout=60).status_code == 200


def test_a_pretrain_run_logs_registers_and_stores_its_encoder_through_the_server(
    stack, pretrained, monkeypatch
):
    print(f"moco pretrain took {pretrained.took:.1f} s")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack.user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.password)
    client = MlflowClient(stack.uri, registry_uri=stack.uri)
    experiment = client.get_experiment_by_name("moco")
    (run,) = client.search_runs([experiment.experiment_id], f"tags.`moco.name` = '{NAME}'")
    assert run.info.status == "FINISHED"
    assert "train/loss" in run.data.metrics  # rank 0's metrics: the training worker logged in too
    model = client.get_registered_model(f"moco-{NAME}")
    assert model.aliases.get("champion") == "1"
    assert client.get_model_version(f"moco-{NAME}", "1").run_id == run.info.run_id
    # the weights went through the server into the artifact bucket (the client has no S3 keys)
    keys = [
        o["Key"]
        for page in stack.s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow")
        for o in page.get("Contents", [])
    ]
    assert any(run.info.run_id in k and k.endswith("weights.pt") for k in keys), keys


def test_pull_without_credentials_says_so_and_with_them_works(
    stack, pretrained, tmp_path, monkeypatch, capsys
):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    ref = f"models:/moco-{NAME}@champion"
    args = ["encoders", "pull", ref, "--out", str(tmp_path / "enc"), "--tracking-uri", stack.uri]
    capsys.readouterr()
    assert main(args) == EXIT_FAIL
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert "MLFLOW_TRACKING_USERNAME" in err and "MLFLOW_TRACKING_PASSWORD" in err, err
    assert not (tmp_path / "enc").exists()

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack.user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong" + stack.password)
    assert main(args) == EXIT_FAIL
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "refused user 'admin'" in err, err
    assert stack.password not in err and not (tmp_path / "enc").exists()

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", stack.user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.password)
    assert main(args) == EXIT_OK
    assert (tmp_path / "enc" / "weights.pt").is_file() and (tmp_path / "enc" / "encoder.json").is_file()
