"""MLflow failing under a run, for real: a server on 127.0.0.1 SIGSTOPped mid-run for longer than the
client's timeout, SIGKILLed while the run publishes its encoder (then restarted on the same port and
store); and the champion alias under concurrent registrations."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from service import tracking
from service.pretrain import PretrainError, pretrain
from service.progress import ProgressPrinter
from service.records import RunRecord
from service.registry import publish
from service.registry.champion import CHAMPION, TAG_FINGERPRINT, TAG_METRIC, TAG_VALUE
from service.registry.models import _move_champion, all_versions, repair_champion

from .conftest import small_config
from .servers import free_ports, stop_tree

pytestmark = pytest.mark.slow


@contextmanager
def tracking_server(port: int, base: Path):
    """``mlflow server`` on 127.0.0.1:``port`` over a sqlite store and an artifact folder in ``base``
    (the same store each time it is started there); yields the process."""
    base.mkdir(parents=True, exist_ok=True)
    log = open(base / "mlflow.log", "a")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{base / 'mlflow.db'}",
            "--artifacts-destination",
            str(base / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=base,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # no job runner: boots faster
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (base / "mlflow.log").read_text()[-3000:]
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, (base / "mlflow.log").read_text()[-3000:]
            time.sleep(0.3)
        yield proc
    finally:
        stop_tree(proc.pid)
        log.close()


class OutageAtEpoch(ProgressPrinter):
    """Stops the MLflow server (SIGSTOP) at the first step of epoch ``epoch`` for ``stop_s`` seconds, and
    keeps when each step reached the driver."""

    def __init__(self, pid: int, epoch: int, stop_s: float) -> None:
        super().__init__(stream=io.StringIO())
        self.pid, self.epoch, self.stop_s = pid, epoch, stop_s
        self.steps: list[tuple[float, int]] = []
        self.stopped_at: float | None = None

    def show(self, p: dict) -> None:
        super().show(p)
        if p.get("kind") == "epoch":
            return
        self.steps.append((time.monotonic(), int(p["step"])))
        if self.stopped_at is None and int(p["epoch"]) >= self.epoch:
            os.kill(self.pid, signal.SIGSTOP)
            self.stopped_at = time.monotonic()
            threading.Timer(self.stop_s, os.kill, (self.pid, signal.SIGCONT)).start()


def test_mlflow_outages_cost_no_step_no_metric_and_no_second_version(
    ray_cluster, digits_root, tmp_path, monkeypatch
):
    """One run, two outages. The server is stopped (SIGSTOP) for 12 s mid-run with the client's timeout
    at 3 s (as a 3-minute stop against the default 120 s): training goes on meanwhile, no worker
    restarts, every step's loss reaches the run once. Then the server dies (SIGKILL) after the version is
    registered, before the run is finished (its metrics linked to the model): the run fails with one
    message; ``--resume`` on the server restarted on the same port and store publishes it (no Ray Train
    run: training was over) with the same version, none registered twice."""
    timeout_s = 3.0
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(timeout_s)))  # travels to the workers
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the driver fails in seconds, not minutes
    (port,) = free_ports(1)
    uri, base = f"http://127.0.0.1:{port}", tmp_path / "server"
    cfg = small_config(
        digits_root,
        tmp_path,
        "optim.epochs=3",
        "run.max_steps_per_epoch=8",
        "eval.knn_every_epochs=0",
        f"tracking.uri={uri}",
        "name=outage",
    )
    real_link = publish.link_metrics
    with tracking_server(port, base) as server:

        def server_dies_then_link(*args, **kwargs):
            stop_tree(server.pid)  # SIGTERM, then SIGKILL: gone, half-way through publishing
            return real_link(*args, **kwargs)

        monkeypatch.setattr(publish, "link_metrics", server_dies_then_link)
        printer = OutageAtEpoch(server.pid, epoch=1, stop_s=12.0)  # progress counts epochs from 0
        with pytest.raises(PretrainError) as failed:
            pretrain(cfg, printer=printer)
    assert printer.stopped_at is not None
    during = [t for t, _ in printer.steps if printer.stopped_at <= t <= printer.stopped_at + 12.0]
    gaps = [b - a for a, b in zip(during, during[1:], strict=False)]
    assert len(during) > 2 and max(gaps) < timeout_s, printer.steps  # no step waited for the client
    message = str(failed.value)
    assert "trained, but publishing its encoder to MLflow" in message, message
    assert "--resume outage-" in message and "Traceback" not in message
    (record_dir,) = [d for d in (tmp_path / "runs").iterdir() if d.name.startswith("outage-")]
    record = RunRecord.load(record_dir)
    assert record.status == "failed" and not record.is_live()

    monkeypatch.setattr(publish, "link_metrics", real_link)
    with tracking_server(port, base):  # the same port and store
        result = pretrain(cfg, resume=True)
        assert result.run_name == record.name and result.registered["version"] == 1
        client = tracking.client(uri)
        assert [int(mv.version) for mv in all_versions(client, "moco-outage")] == [1]
        assert client.get_run(record.mlflow_run_id).info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(record.mlflow_run_id, "train/loss")]
        restarts = [m.step for m in client.get_metric_history(record.mlflow_run_id, "train/resumed_at_step")]
    assert steps == list(range(1, 25)), steps  # contiguous, none twice, none lost
    assert restarts == [], restarts  # no worker restart; the --resume only published (no Ray Train run)


def scored(client, name: str, run_id: str, value: float, fingerprint: str = "fp") -> int:
    tags = {TAG_METRIC: "eval/knn_top1", TAG_VALUE: repr(value), TAG_FINGERPRINT: fingerprint}
    mv = client.create_model_version(name, source=f"runs:/{run_id}/encoder", run_id=run_id, tags=tags)
    return int(mv.version)


def test_champion_converges_to_the_best_comparable_version(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.client(uri)
    run_id = client.create_run(client.create_experiment("champ")).info.run_id
    client.create_registered_model("moco-champ")
    values = [0.61, 0.74, 0.52, 0.74, 0.69, 0.58]
    versions = [scored(client, "moco-champ", run_id, v) for v in values]
    other = scored(client, "moco-champ", run_id, 0.99, fingerprint="other-data")  # not comparable

    # registrations racing: each decides on what it read, then re-reads and repairs
    start = threading.Barrier(len(versions))
    errors: list[BaseException] = []

    def register(version: int, value: float) -> None:
        try:
            start.wait()
            _move_champion(client, "moco-champ", version)  # elects, then repairs on a fresh read
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=register, args=(v, x)) for v, x in zip(versions, values, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    champion = int(client.get_registered_model("moco-champ").aliases[CHAMPION])
    assert champion in versions and values[versions.index(champion)] == 0.74

    # a move made on a stale read (a worse version set last) is repaired; of a tie the older one stays
    client.set_registered_model_alias("moco-champ", CHAMPION, str(versions[2]))
    assert repair_champion(client, "moco-champ") == versions[1]
    assert int(client.get_registered_model("moco-champ").aliases[CHAMPION]) == versions[1]
    # a champion on other data is never displaced by versions it cannot be compared with
    client.set_registered_model_alias("moco-champ", CHAMPION, str(other))
    assert repair_champion(client, "moco-champ") == other
