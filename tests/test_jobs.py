"""`moco submit` / `moco jobs` against a real Ray head (token auth on, dashboard on 127.0.0.1) started
here, tracked in a real MLflow server on a real PostgreSQL started here.

The head has its own --temp-dir and ports, so it never becomes "the latest cluster" of this machine
(/tmp/ray/ray_current_cluster) that a plain ``ray.init()`` would join, and it is stopped by killing
the processes it started, never with ``ray stop`` (which stops every Ray cluster on the machine).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from service import jobs
from service.cli import main

from .conftest import REPO
from .servers import PostgresUnavailable, free_ports, postgres, stop_tree

pytestmark = pytest.mark.slow

EXPERIMENT = str(REPO / "experiments" / "digits.yaml")
CLEAN_ENV = (
    "RAY_ADDRESS",
    "RAY_API_SERVER_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "MLFLOW_TRACKING_URI",
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(extra)
    return env


def moco(*args: str, env: dict[str, str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """The real `moco` command in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---------------------------------------------------------------------------------------------
# a Ray head with token auth, and an MLflow server on PostgreSQL


class Head:
    def __init__(self, address: str, gcs_port: int, token_file: Path, temp_dir: Path) -> None:
        self.address, self.gcs_port, self.token_file, self.temp_dir = address, gcs_port, token_file, temp_dir
        self.token = token_file.read_text().strip()

    def env(self, **extra: str) -> dict[str, str]:
        """A client environment that holds the cluster's token (in a file, as on a laptop)."""
        return clean_env(RAY_AUTH_TOKEN_PATH=str(self.token_file), **extra)

    def client(self):
        return jobs.jobs_client(self.address, token=self.token)


@pytest.fixture(scope="module")
def ray_head():
    temp_dir = Path(tempfile.mkdtemp(prefix="mocoray-", dir="/tmp"))  # short: Unix socket paths live here
    token_file = temp_dir / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    gcs, dash, client, agent, agent_grpc, rt_env, metrics, node_mgr, obj_mgr = free_ports(9)
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--port",
        str(gcs),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dash),
        "--ray-client-server-port",
        str(client),
        "--dashboard-agent-listen-port",
        str(agent),
        "--dashboard-agent-grpc-port",
        str(agent_grpc),
        "--runtime-env-agent-port",
        str(rt_env),
        "--metrics-export-port",
        str(metrics),
        "--node-manager-port",
        str(node_mgr),
        "--object-manager-port",
        str(obj_mgr),
        "--num-cpus",
        "2",
        "--object-store-memory",
        str(300 * 2**20),
        "--temp-dir",
        str(temp_dir),
        "--disable-usage-stats",
    ]
    log = open(temp_dir / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"ray start --head exited {proc.returncode}:\n"
                    f"{(temp_dir / 'head.log').read_text()[-3000:]}"
                )
            try:
                if (
                    requests.get(address + "/api/version", timeout=2).status_code == 401
                ):  # up, and asks for a token
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the Ray head's dashboard did not come up:\n"
                    f"{(temp_dir / 'head.log').read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield Head(address, gcs, token_file, temp_dir)
    finally:
        stop_tree(proc.pid)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


class PgServer:
    uri: str | None = None
    artifacts: Path | None = None
    why_not: str = ""


@pytest.fixture(scope="module")
def mlflow_on_postgres():
    """An MLflow tracking server (artifacts served by it) on a throwaway PostgreSQL cluster, both on
    127.0.0.1; ``uri`` is None and ``why_not`` says why where PostgreSQL is not available."""
    server = PgServer()
    with contextlib.ExitStack() as stack:
        try:
            pg = stack.enter_context(postgres(user="moco"))
        except PostgresUnavailable as e:
            server.why_not = str(e)
            yield server
            return
        base = Path(tempfile.mkdtemp(prefix="mocoml-", dir="/tmp"))
        stack.callback(shutil.rmtree, base, ignore_errors=True)
        (ml_port,) = free_ports(1)
        artifacts = base / "artifacts"
        artifacts.mkdir()
        ml_log = stack.enter_context(open(base / "mlflow.log", "w"))
        mlflow_proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "mlflow"),
                "server",
                "--backend-store-uri",
                pg.uri(),
                "--artifacts-destination",
                str(artifacts),
                "--host",
                "127.0.0.1",
                "--port",
                str(ml_port),
                "--workers",
                "1",
            ],
            env=clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
            stdout=ml_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=base,
        )
        stack.callback(stop_tree, mlflow_proc.pid)
        uri = f"http://127.0.0.1:{ml_port}"
        deadline = time.monotonic() + 180
        while True:
            if mlflow_proc.poll() is not None:
                pytest.fail(f"mlflow server exited:\n{(base / 'mlflow.log').read_text()[-3000:]}")
            try:
                if requests.get(uri + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up:\n{(base / 'mlflow.log').read_text()[-3000:]}")
            time.sleep(0.5)
        server.uri, server.artifacts = uri, artifacts
        yield server


# ---------------------------------------------------------------------------------------------
# helpers


def job_id_of(out: str) -> str:
    m = re.search(r"submitted job (\S+) to", out)
    assert m, out
    return m.group(1)


def wait_until(fn, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(1.0)


def status_of(client, job_id: str) -> str:
    return str(client.get_job_info(job_id).status.value)


def digits_overrides(root: Path, *extra: str) -> list[str]:
    sets = [f"data.root={root}", "data.num_workers=0", *extra]
    return [a for s in sets for a in ("--set", s)]


# ---------------------------------------------------------------------------------------------
# tests


def test_submit_train_track_pull_and_stop(ray_head, mlflow_on_postgres, digits_root, tmp_path):
    server = mlflow_on_postgres
    uri = server.uri or f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = ray_head.env()
    # a long job, to be stopped while it trains
    long = moco(
        "submit",
        EXPERIMENT,
        "--address",
        ray_head.address,
        "--set",
        "name=jobslong",
        *digits_overrides(
            digits_root,
            "optim.epochs=500",
            "eval.knn_every_epochs=0",
            f"run.storage_path={tmp_path / 'long-runs'}",
        ),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'long.db'}",
        env=env,
        cwd=tmp_path,
    )
    assert long.returncode == 0, long.stderr
    long_id = job_id_of(long.stdout)
    # the digits experiment, a few steps; checkpoints under a URI storage path
    short = moco(
        "submit",
        EXPERIMENT,
        "--address",
        ray_head.address,
        "--set",
        "name=jobsdigits",
        *digits_overrides(
            digits_root,
            "optim.epochs=1",
            "run.max_steps_per_epoch=4",
            f"run.storage_path=file://{tmp_path / 'runs'}",
        ),
        "--tracking-uri",
        uri,
        env=env,
        cwd=tmp_path,
    )
    assert short.returncode == 0, short.stderr
    short_id = job_id_of(short.stdout)
    assert f"moco jobs status {short_id}" in short.stdout

    client = ray_head.client()
    wait_until(lambda: "epoch 1/500" in client.get_job_logs(long_id), 180, "the long job to train")
    stop = moco("jobs", "stop", long_id, "--address", ray_head.address, env=env, cwd=tmp_path)
    assert stop.returncode == 0, stop.stderr
    assert f"job {long_id}: STOPPED" in stop.stdout
    assert status_of(client, long_id) == "STOPPED"

    final = wait_until(
        lambda: (s := status_of(client, short_id)) in jobs.TERMINAL and s, 240, "the digits job"
    )
    assert final == "SUCCEEDED", client.get_job_logs(short_id)[-3000:]
    status = moco("jobs", "status", short_id, "--address", ray_head.address, env=env, cwd=tmp_path)
    assert status.returncode == 0 and f"job {short_id}: SUCCEEDED" in status.stdout, (
        status.stdout + status.stderr
    )
    assert f"MLflow      {uri}" in status.stdout
    logs = moco("jobs", "logs", short_id, "--follow", "--address", ray_head.address, env=env, cwd=tmp_path)
    assert logs.returncode == 0, logs.stderr
    assert "epoch 1/1  step 4/4  loss" in logs.stdout and "run jobsdigits-" in logs.stdout, logs.stdout[
        -3000:
    ]
    listing = moco("jobs", "list", "--address", ray_head.address, env=env, cwd=tmp_path)
    assert re.search(rf"{short_id}\s+SUCCEEDED\s.*pretrain jobsdigits", listing.stdout), listing.stdout
    assert re.search(rf"{long_id}\s+STOPPED\s", listing.stdout), listing.stdout
    # the stopped job's driver marked its run stopped, in its record and in MLflow (not left "running")
    from mlflow.tracking import MlflowClient

    (long_dir,) = [d for d in (tmp_path / "long-runs").iterdir() if d.name.startswith("jobslong-")]
    assert '"status": "stopped"' in (long_dir / "moco_run.json").read_text()
    long_ml = MlflowClient(f"sqlite:///{tmp_path / 'long.db'}")
    (long_run,) = long_ml.search_runs([long_ml.get_experiment_by_name("moco").experiment_id])
    assert long_run.info.status == "KILLED"

    # checkpoints and the run record on the (URI) storage path, not in the job's scratch folder
    run_dirs = [d for d in (tmp_path / "runs").iterdir() if d.name.startswith("jobsdigits-")]
    assert len(run_dirs) == 1 and (run_dirs[0] / "epoch_00001" / "state.pt").is_file()
    assert '"status": "finished"' in (run_dirs[0] / "moco_run.json").read_text()

    # the run is in the tracking store, and the encoder comes back from it
    ml = MlflowClient(uri)
    runs = ml.search_runs(
        [ml.get_experiment_by_name("moco").experiment_id], "tags.`moco.name` = 'jobsdigits'"
    )
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and "train/loss" in runs[0].data.metrics
    assert ml.get_registered_model("moco-jobsdigits").aliases.get("champion") == "1"
    pull = moco(
        "encoders",
        "pull",
        "models:/moco-jobsdigits@champion",
        "--out",
        str(tmp_path / "enc"),
        env=clean_env(MLFLOW_TRACKING_URI=uri),
        cwd=tmp_path,
    )
    assert pull.returncode == 0, pull.stderr
    from service.registry import read_encoder_package

    backbone, meta = read_encoder_package(tmp_path / "enc")
    assert meta["source_run_id"] == runs[0].info.run_id and meta["name"] == "jobsdigits"

    # what the encoder is worth, measured on the cluster: moco evaluate as a job, tracked in MLflow
    ev = moco(
        "submit",
        "--address",
        ray_head.address,
        "--tracking-uri",
        uri,
        "--wait",
        "--evaluate",
        "models:/moco-jobsdigits@champion",
        "--data",
        str(digits_root),
        "--protocol",
        "knn",
        "--bootstrap",
        "0",
        env=env,
        cwd=tmp_path,
    )
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr
    assert "SUCCEEDED" in ev.stderr and "MLflow run:" in ev.stdout, ev.stdout[-3000:]
    (evaluation,) = ml.search_runs(
        [ml.get_experiment_by_name("moco").experiment_id],
        f"tags.`moco.source_run_id` = '{runs[0].info.run_id}'",
    )
    assert evaluation.info.status == "FINISHED" and "evaluation.json" in {
        a.path for a in ml.list_artifacts(evaluation.info.run_id)
    }

    if server.uri is None:
        pytest.skip(
            f"Ray jobs checked with a sqlite store; the PostgreSQL-backed MLflow server part did not run: "
            f"{server.why_not}"
        )
    # artifacts went through the tracking server into its artifact store
    assert list(server.artifacts.rglob("weights.pt")), "the encoder did not reach the server's artifact store"


def test_failed_job_says_why(ray_head, tmp_path):
    env = ray_head.env()
    missing = tmp_path / "no-such-dataset"
    sub = moco(
        "submit",
        EXPERIMENT,
        "--address",
        ray_head.address,
        "--wait",
        *digits_overrides(missing, f"run.storage_path={tmp_path / 'runs'}"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        env=env,
        cwd=tmp_path,
    )
    assert sub.returncode == 1, sub.stdout + sub.stderr
    assert "FAILED" in sub.stderr and f"{missing}/train.csv not found" in sub.stdout + sub.stderr
    job_id = job_id_of(sub.stdout)
    status = moco("jobs", "status", job_id, "--address", ray_head.address, env=env, cwd=tmp_path)
    assert status.returncode == 1
    assert f"job {job_id}: FAILED" in status.stdout
    assert "reason:" in status.stdout and f"{missing}/train.csv not found" in status.stdout


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_clear_errors(ray_head, digits_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token of this machine
    for var in CLEAN_ENV:
        if (
            var != "RAY_AUTH_MODE"
        ):  # this process's own Ray setting (conftest.ray_cluster); moco reads no mode
            monkeypatch.delenv(var, raising=False)
    good = ["--set", f"data.root={digits_root}", "--set", f"run.storage_path={tmp_path / 'runs'}"]
    free = free_ports(1)[0]

    # no address at all, and an address that is not a dashboard
    code, msg = _run(capsys, "jobs", "list")
    assert code == 1 and "no Ray cluster given" in msg and "--address" in msg
    code, msg = _run(capsys, "jobs", "list", "--address", f"127.0.0.1:{ray_head.gcs_port}")
    assert code == 1 and "not a Ray dashboard" in msg and "8265" in msg
    # dashboard down: nothing listens there
    code, msg = _run(capsys, "jobs", "status", "x", "--address", f"http://127.0.0.1:{free}")
    assert code == 1 and "cannot reach the Ray dashboard" in msg and "Connection refused" in msg
    # the cluster asks for a token: none here, then a wrong one
    code, msg = _run(capsys, "jobs", "list", "--address", ray_head.address)
    assert code == 1 and "requires an auth token" in msg and "RAY_AUTH_TOKEN" in msg
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    code, msg = _run(capsys, "jobs", "list", "--address", ray_head.address)
    assert code == 1 and "rejected the auth token" in msg
    # the right token, from RAY_ADDRESS; an unknown job id
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head.token)
    monkeypatch.setenv("RAY_ADDRESS", ray_head.address)
    code, msg = _run(capsys, "jobs", "status", "moco-nope-1")
    assert code == 1 and "no job 'moco-nope-1'" in msg and "moco jobs list" in msg
    code, msg = _run(capsys, "jobs", "stop", "moco-nope-1")
    assert code == 1 and "no job 'moco-nope-1'" in msg
    monkeypatch.delenv("RAY_ADDRESS")

    # refused before anything reaches a cluster: a local store for a remote cluster, relative paths,
    # an invalid config
    remote = "http://10.255.255.1:8265"
    code, msg = _run(
        capsys,
        "submit",
        EXPERIMENT,
        "--address",
        remote,
        *good,
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    assert code == 1 and "is a store on this machine" in msg and "--tracking-uri" in msg
    code, msg = _run(
        capsys, "submit", EXPERIMENT, "--address", remote, *good, "--tracking-uri", "http://127.0.0.1:5000"
    )
    assert code == 1 and "loopback" in msg
    code, msg = _run(
        capsys,
        "submit",
        EXPERIMENT,
        "--address",
        remote,
        "--set",
        f"data.root={digits_root}",
        "--tracking-uri",
        "http://mlflow.internal:5000",
    )
    assert code == 1 and "run.storage_path=None" in msg and "shared storage" in msg
    code, msg = _run(
        capsys,
        "submit",
        EXPERIMENT,
        "--address",
        remote,
        "--set",
        "run.storage_path=s3://b/r",
        "--tracking-uri",
        "http://mlflow.internal:5000",
    )
    assert code == 1 and "data.root=data/digits is a relative path" in msg
    code, msg = _run(
        capsys, "submit", EXPERIMENT, "--address", ray_head.address, *good, "--set", "moco.temprature=0.2"
    )
    assert code == 1 and "moco.temprature: unknown key" in msg
    # an evaluation: its own arguments checked here, its paths ones every node sees
    ev = ["submit", "--address", remote, "--tracking-uri", "http://mlflow.internal:5000", "--evaluate"]
    code, msg = _run(capsys, *ev, "models:/moco-digits@champion", "--data", "data/digits")
    assert code == 1 and "--data data/digits is a relative path" in msg
    code, msg = _run(capsys, *ev, "./enc", "--data", str(digits_root))
    assert code == 1 and "ENCODER ./enc is a relative path" in msg
    code, msg = _run(capsys, *ev, "models:/m@a", "--data", str(digits_root), "--knn-k", "0")
    assert code == 1 and "--knn-k must be at least 1" in msg
    code, msg = _run(capsys, *ev, "models:/m@a", "--data", str(digits_root), "--no-track")
    assert code == 1 and "the job's working folder is discarded" in msg
    code, msg = _run(capsys, "submit", EXPERIMENT, "--address", remote, "--evaluate", "models:/m@a")
    assert code == 1 and "leave out FILE" in msg
    code, msg = _run(capsys, "submit", "--address", remote)
    assert code == 1 and "give the experiment FILE" in msg


def test_addresses(monkeypatch):
    for var in CLEAN_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.1:8265")
    assert jobs.resolve_address(None) == "http://10.0.0.1:8265"
    monkeypatch.setenv(
        "RAY_API_SERVER_ADDRESS", "head.internal"
    )  # wins over RAY_ADDRESS; scheme and port added
    assert jobs.resolve_address(None) == "http://head.internal:8265"
    assert jobs.resolve_address("https://ray.example.org:443/") == "https://ray.example.org:443"
    for bad in ("auto", "ray://10.0.0.1:10001"):
        with pytest.raises(jobs.JobsError, match="dashboard"):
            jobs.resolve_address(bad)
    assert jobs.is_loopback("http://127.0.0.1:8265") and jobs.is_loopback("http://localhost:8265")
    assert not jobs.is_loopback("http://10.255.255.1:8265")


def test_package_carries_the_validated_config(tmp_path):
    from moco_core.config import load_config

    cfg = load_config(
        EXPERIMENT, ["data.root=/data/digits", "run.storage_path=s3://b/runs", "moco.temperature=0.3"]
    )
    entry, env = jobs.package(
        cfg, tmp_path / "job", tune=False, code="image", tracking_uri="http://mlflow:5000", resume="digits-1"
    )
    assert entry == "python -m service.cli pretrain experiment.yaml --resume digits-1"
    shipped = load_config(tmp_path / "job" / "experiment.yaml")
    assert shipped.moco.temperature == 0.3 and shipped.tracking.uri == "http://mlflow:5000"
    assert env["working_dir"] == str(tmp_path / "job") and "py_modules" not in env
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    entry, env = jobs.package(
        cfg, tmp_path / "job2", tune=True, code="upload", tracking_uri="http://mlflow:5000"
    )
    assert entry == "python -m service.cli tune experiment.yaml"
    assert [Path(p).name for p in env["py_modules"]] == ["moco_core", "service"]
    entry, _ = jobs.package(cfg, tmp_path / "job3", tune=True, code="image", tracking_uri="x", resume="")
    assert entry == "python -m service.cli tune experiment.yaml --resume"


def test_head_does_not_capture_local_clusters(ray_head, ray_cluster):
    """The suite's own `ray.init(num_cpus=2)` cluster is its own, not the head started here."""
    ctx = ray_cluster.get_runtime_context()
    assert not ctx.gcs_address.endswith(f":{ray_head.gcs_port}")
    current = Path("/tmp/ray/ray_current_cluster")
    assert not (current.exists() and current.read_text().strip().endswith(f":{ray_head.gcs_port}"))
    assert (ray_head.temp_dir / "ray_current_cluster").read_text().strip().endswith(f":{ray_head.gcs_port}")
