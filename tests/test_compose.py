"""The docker/ stack, checked without a Docker engine: `docker-compose config` (Debian's docker-compose
1.29 rejects unknown keys and unset required variables) and the KubeRay RayJob's required fields."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
SERVICES = {"check-env", "postgres", "minio", "buckets", "mlflow", "ray-head", "ray-worker"}


def compose_config(*files: Path, env_file: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip(
            "docker-compose not installed (`make test` installs Debian's docker-compose where apt-get can)"
        )
    args = [exe, "--env-file", str(env_file)]
    for f in files:
        args += ["-f", str(f)]
    return subprocess.run([*args, "config"], capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.fixture(scope="module")
def stack() -> dict:
    out = compose_config(COMPOSE, env_file=ENV_EXAMPLE)
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def test_compose_validates_with_the_services_and_health_checks(stack):
    services = stack["services"]
    assert set(services) == SERVICES
    for name in ("postgres", "minio", "mlflow", "ray-head"):
        assert services[name]["healthcheck"]["test"], name
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["ray-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert {"pgdata", "miniodata", "mlflow-auth"} <= set(stack["volumes"])
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"][0]
    assert "ray start --head" in services["ray-head"]["command"][0]
    assert "--address=ray-head:6379" in services["ray-worker"]["command"][0]


def test_every_service_waits_for_the_secrets_check(stack):
    """The one-shot check-env runs docker/check-env.py on every required variable of the env file, and no
    other service starts unless it exits 0."""
    services = stack["services"]
    check = services["check-env"]
    assert check["command"] == ["python", "/usr/local/bin/check-env.py"] and check["restart"] == "no"
    assert check["image"] == services["mlflow"]["image"]  # the MLflow image: it has Python
    assert "COPY check-env.py /usr/local/bin/check-env.py" in (DOCKER / "mlflow.Dockerfile").read_text()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text()))
    assert set(check["environment"]) == required, required ^ set(check["environment"])
    for name, service in services.items():
        if name != "check-env":
            assert service["depends_on"]["check-env"] == {"condition": "service_completed_successfully"}, name


def test_compose_security_defaults(stack):
    services = stack["services"]
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published and all(str(p).startswith("127.0.0.1:") for p in published), published
    assert any(":8265:8265" in str(p) for p in services["ray-head"]["ports"])
    example = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z_]+=", line)
    )
    for node in ("ray-head", "ray-worker"):
        env = services[node]["environment"]
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"] == example["RAY_AUTH_TOKEN"]  # from the env file, not from compose.yaml
    mlflow = services["mlflow"]
    assert "--app-name=basic-auth" in mlflow["command"] and "--serve-artifacts" in mlflow["command"]
    assert "--artifacts-destination=s3://mlflow/" in mlflow["command"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert mlflow["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"] == example["MLFLOW_ADMIN_PASSWORD"]
    # basic auth does not start without a static Flask secret key (CSRF tokens), from the env file too
    assert mlflow["environment"]["MLFLOW_FLASK_SERVER_SECRET_KEY"] == example["MLFLOW_FLASK_SECRET_KEY"]


def test_compose_files_hold_no_secrets():
    """Every credential in compose.yaml is a required variable of the env file, and the example lists each."""
    raw = COMPOSE.read_text()
    doc = yaml.safe_load(raw)  # anchors resolved: the Ray nodes' shared environment included
    secretish = re.compile(r"PASSWORD|TOKEN|SECRET|ACCESS_KEY|ROOT_USER|USERNAME")
    checked = 0
    for name, service in doc["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if secretish.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), (
                    f"{name}: {key} is not from the env file"
                )
                checked += 1
    assert checked >= 10
    store = doc["services"]["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert re.match(
        r"postgresql\+psycopg2://mlflow:\$\{POSTGRES_PASSWORD:\?[^}]+\}@postgres:5432/mlflow$", store
    )
    required = set(re.findall(r"\$\{([A-Z_]+):\?", raw))
    example = ENV_EXAMPLE.read_text()
    assert required and all(re.search(rf"^{name}=", example, re.M) for name in required), required
    assert "docker/.env" in (REPO / ".gitignore").read_text().splitlines()


def test_compose_refuses_to_start_without_credentials(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    out = compose_config(COMPOSE, env_file=empty)
    assert out.returncode != 0
    assert "in docker/.env" in out.stderr, out.stderr


def test_compose_gpu_override():
    out = compose_config(COMPOSE, DOCKER / "compose.gpu.yaml", env_file=ENV_EXAMPLE)
    assert out.returncode == 0, out.stderr
    devices = yaml.safe_load(out.stdout)["services"]["ray-worker"]["deploy"]["resources"]["reservations"][
        "devices"
    ]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_dockerfiles():
    ray = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^ARG RAY_IMAGE=rayproject/ray:2\.60\.0-py311-cu12\d$", ray, re.M)
    assert "FROM ${RAY_IMAGE}" in ray and "-c constraints.txt" in ray
    pins = dict(
        line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line
    )
    server = (DOCKER / "mlflow.Dockerfile").read_text()
    for name in ("mlflow", "psycopg2-binary", "boto3", "Flask-WTF"):
        assert f"{name}=={pins[name]}" in server, name
    assert ".venv" in (REPO / ".dockerignore").read_text().splitlines()


def test_kuberay_rayjob_manifest():
    docs = list(yaml.safe_load_all((DOCKER / "kuberay-rayjob.yaml").read_text()))
    assert len(docs) == 1
    job = docs[0]
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert "service.cli pretrain" in spec["entrypoint"] and "--gpu" in spec["entrypoint"]
    assert "run.storage_path=s3://" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    head_container = head["template"]["spec"]["containers"][0]
    assert head_container["image"]
    workers = cluster["workerGroupSpecs"]
    assert workers
    for group in workers:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    for c in [
        head_container,
        *(g["template"]["spec"]["containers"][0] for g in workers),
        spec["submitterPodTemplate"]["spec"]["containers"][0],
    ]:
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]  # the token lives in a Secret
