"""`moco tune`: the tune: section, a real sweep on a local Ray cluster with ASHA, MLflow parent and child
runs, the registered best encoder, and resuming a sweep whose driver was killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from moco_core.config import ConfigError, dump_yaml, load_config
from moco_core.data import dataset_fingerprint, read_dataset
from service.cli import EXIT_FAIL, main

from .conftest import REPO

TUNE_YAML = REPO / "experiments" / "digits_tune.yaml"


def tune_overrides(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    """experiments/digits_tune.yaml shrunk to trials of a few seconds of training on 2 cores."""
    return [
        f"data.root={root}",
        "data.num_workers=0",
        f"run.storage_path={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "optim.epochs=2",
        "run.max_steps_per_epoch=3",
        "moco.queue_size=64",
        "tune.space.moco.momentum=null",
        *extra,
    ]


# ---------------------------------------------------------------------------------------------
# the tune: section


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["tune.space.moco.queu_size=[64]"], "tune.space.moco.queu_size: unknown key"),
        (["tune.space.model.arch=[resnet50]"], "tune.space.model: unknown key"),
        (
            ["tune.space.moco.queue_size=[64, 0]"],
            "tune.space.moco.queue_size: 0 is not a valid moco.queue_size",
        ),
        (
            ["tune.space.moco.queue_size=[-8]"],
            "tune.space.moco.queue_size: -8 is not a valid moco.queue_size",
        ),
        (
            ["tune.space.moco.momentum=[0.9, 1.5]"],
            "tune.space.moco.momentum: 1.5 is not a valid moco.momentum",
        ),
        (
            ["tune.search=random", "tune.space.moco.momentum={uniform: [-0.1, 0.99]}"],
            "tune.space.moco.momentum: -0.1 is not a valid moco.momentum",
        ),
        (
            ["tune.space.moco.temperature=[0.0, 0.2]"],
            "tune.space.moco.temperature: 0.0 is not a valid moco.temperature",
        ),
        (["tune.search=random", "tune.space.moco.temperature={loguniform: [0, 0.5]}"], "needs low > 0"),
        (["tune.search=random", "tune.space.moco.temperature={uniform: [0.5, 0.1]}"], "needs low < high"),
        (["tune.search=random", "tune.space.moco.queue_size={uniform: [16, 4096]}"], "takes whole numbers"),
        (["tune.space.moco.temperature={uniform: [0.05, 0.5]}"], "search: grid needs lists of values"),
        (["tune.space.moco.temperature={grid: [0.1]}"], "tune.space.moco.temperature.grid: unknown key"),
        (["tune.space.optim.lr=[0.03, -1]"], "tune.space.optim.lr: -1 is not a valid optim.lr"),
        (["tune.space={}"], "space is empty"),
        (["tune.metric=eval/accuracy"], "tune.metric"),
        (["eval.knn_every_epochs=2"], "eval.knn_every_epochs: 1"),
        (["tune.asha.grace_period=4"], "tune.asha.grace_period=4 must be below optim.epochs=4"),
        (["tune.num_samples=0"], "tune.num_samples"),
        (
            ["tune.space.moco.mechanism=[moco, simclr]"],
            "tune.space.moco.mechanism: 'simclr' is not a valid moco.mechanism",
        ),
        (["tune.space.moco.temperature=[0.1, fast]"], "space.moco.temperature: 'fast' is not a number"),
        (
            ["tune.space.moco.mechanism=[moco, end_to_end]", "tune.space.moco.negatives=[2]"],
            "tune.space.moco.negatives: 2 is not a valid moco.negatives for moco.mechanism=end_to_end "
            "(optim.batch_size",
        ),
    ],
)
def test_bad_spaces_are_config_errors_naming_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(TUNE_YAML, overrides)
    assert fragment in str(err.value)


def test_tune_section_round_trips_and_makes_trial_configs(tmp_path):
    cfg = load_config(
        TUNE_YAML,
        [
            "tune.search=random",
            "tune.space.moco.momentum={uniform: [0.9, 0.999]}",
            "tune.space.optim.lr={loguniform: [1.0e-3, 0.1]}",
            "tune.space.moco.queue_size={lograndint: [64, 4096]}",
        ],
    )
    assert list(cfg.tune.space.dims()) == ["moco.temperature", "moco.queue_size", "moco.momentum", "optim.lr"]
    (tmp_path / "x.yaml").write_text(dump_yaml(cfg))  # what `moco submit --tune` ships to the cluster
    again = load_config(tmp_path / "x.yaml")
    assert again.tune == cfg.tune
    space_params = {k: v for k, v in cfg.flat().items() if k.startswith("tune.space.")}
    assert space_params["tune.space.moco.momentum.uniform"] == [0.9, 0.999]
    assert None not in space_params.values()  # unset kinds are neither YAML keys nor MLflow params
    trial = cfg.trial({"moco.temperature": 0.07, "moco.queue_size": 300, "optim.lr": 0.01})
    assert (trial.moco.temperature, trial.moco.queue_size, trial.optim.lr) == (0.07, 300, 0.01)
    assert trial.tune is None and trial.moco.momentum == cfg.moco.momentum
    with pytest.raises(ValidationError, match="queue_size"):
        cfg.trial({"moco.queue_size": 0})


def test_param_space_maps_kinds_to_ray_tune():
    from ray.tune.search.sample import Categorical, Float, Integer

    from service.sweep.space import param_space

    grid = load_config(TUNE_YAML).tune
    space = param_space(grid)
    assert space["moco.temperature"] == {"grid_search": [0.07, 0.1, 0.2]}
    assert space["moco.queue_size"] == {"grid_search": [128, 256]}
    rnd = load_config(
        TUNE_YAML,
        [
            "tune.search=random",
            "tune.space.moco.momentum={uniform: [0.9, 0.999]}",
            "tune.space.moco.queue_size={randint: [16, 17]}",
        ],
    ).tune
    space = param_space(rnd)
    assert isinstance(space["moco.temperature"], Categorical)
    assert space["moco.temperature"].categories == [0.07, 0.1, 0.2]
    assert isinstance(space["moco.momentum"], Float)
    assert isinstance(space["moco.queue_size"], Integer)
    assert {space["moco.queue_size"].sample() for _ in range(200)} == {16, 17}  # both ends included


def test_default_metric_follows_the_label_kind(digits_root, tmp_path):
    from service.pretrain.inputs import read_partitions
    from service.sweep.space import SweepError, default_metric

    cfg = load_config(TUNE_YAML, [f"data.root={digits_root}"])
    assert default_metric(cfg, read_partitions(cfg, check_files=False)) == "eval/knn_top1"
    unlabelled = load_config(TUNE_YAML, [f"data.root={digits_root}", "data.label_columns=[]"])
    with pytest.raises(SweepError, match="tune.metric: train/loss"):
        default_metric(unlabelled, read_partitions(unlabelled, check_files=False))
    wrong = load_config(TUNE_YAML, [f"data.root={digits_root}", "tune.metric=eval/knn_auroc"])
    with pytest.raises(SweepError, match="use eval/knn_top1"):
        default_metric(wrong, read_partitions(wrong, check_files=False))


def test_cli_rejects_missing_section_and_bad_space_before_ray(tmp_path, capsys):
    assert (
        main(
            [
                "tune",
                str(REPO / "experiments" / "digits.yaml"),
                "--set",
                f"run.storage_path={tmp_path / 'runs'}",
            ]
        )
        == EXIT_FAIL
    )
    assert "has no tune: section" in capsys.readouterr().err
    assert (
        main(
            [
                "tune",
                str(TUNE_YAML),
                "--set",
                "tune.space.moco.queue_size=[0]",
                "--set",
                f"run.storage_path={tmp_path / 'runs'}",
            ]
        )
        == EXIT_FAIL
    )
    err = capsys.readouterr().err
    assert "tune.space.moco.queue_size: 0" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------
# real sweeps


def _children(client, parent_id: str) -> list:
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exp_ids, f"tags.mlflow.parentRunId = '{parent_id}'")


@pytest.mark.slow
def test_sweep_early_stops_tracks_and_registers_the_best(ray_cluster, digits_root, tmp_path):
    from mlflow.tracking import MlflowClient

    from service import registry
    from service.sweep import tune_sweep
    from service.sweep.report import format_result
    from service.sweep.trial import TAG_TRIAL_STARTS

    # train/loss grows with log(K+1), so at the first rung every K=2048 trial ranks below the K=16 ones
    # whatever the order in which trials arrive: ASHA's decision does not depend on timing.
    cfg = load_config(
        TUNE_YAML,
        tune_overrides(
            digits_root,
            tmp_path,
            "tune.space.moco.temperature=[0.1, 0.2]",
            "tune.space.moco.queue_size=[16, 2048]",
            "tune.metric=train/loss",
            "tune.max_concurrent_trials=2",
        ),
    )
    t0 = time.monotonic()
    result = tune_sweep(cfg)
    print(f"sweep of 4 trials: {time.monotonic() - t0:.0f} s")
    print(format_result(result))

    trials = result.trials
    assert len(trials) == 4 and result.metric == "train/loss" and result.mode == "min"
    stopped = [t for t in trials if t.status == "early-stopped"]
    assert stopped, "ASHA stopped no trial"
    assert all(t.epochs == 1 and t.values["moco.queue_size"] == 2048 for t in stopped)
    best = trials[0]
    assert best.status == "finished" and best.epochs == 2 and best.values["moco.queue_size"] == 16
    finished_losses = [t.metric for t in trials if t.status == "finished"]
    assert best.metric == min(finished_losses)

    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["train/loss"] == pytest.approx(best.metric)
    for key in ("moco.temperature", "moco.queue_size"):
        assert parent.data.params[f"best.{key}"] == str(best.values[key])
    children = {r.info.run_id: r for r in _children(client, result.parent_run_id)}
    assert set(children) == {t.run_id for t in trials}  # one child run per trial, no duplicate
    for t in trials:
        run = children[t.run_id]
        assert run.data.params["moco.temperature"] == str(t.values["moco.temperature"])
        assert run.data.params["moco.queue_size"] == str(t.values["moco.queue_size"])
        assert run.data.tags[TAG_TRIAL_STARTS] == "1"
        assert run.data.tags["moco.trial_status"] == t.status
        assert run.info.status == ("FINISHED" if t.status == "finished" else "KILLED")
        assert "encoder" in {a.path for a in client.list_artifacts(t.run_id)}  # every trial's package
        assert "tune.search" not in run.data.params  # a trial's config is a plain experiment
        (data,) = client.get_run(t.run_id).inputs.dataset_inputs  # lineage: the training data, once
        assert data.dataset.digest == dataset_fingerprint(read_dataset(digits_root)["train"])

    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"trials.csv", "best_config.yaml", "plots", "config.yaml"} <= artifacts
    plots = {Path(a.path).name for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert {
        "metric_vs_temperature.png",
        "metric_vs_queue_size.png",
        "parallel_coordinates.png",
        "curves.png",
    } <= plots
    table = client.download_artifacts(result.parent_run_id, "trials.csv", str(tmp_path))
    lines = Path(table).read_text().splitlines()
    assert len(lines) == 5 and lines[1].startswith(f"1,{best.trial_id},finished")
    best_cfg = yaml.safe_load(
        Path(client.download_artifacts(result.parent_run_id, "best_config.yaml", str(tmp_path))).read_text()
    )
    assert best_cfg["moco"]["queue_size"] == 16 and best_cfg["tune"] is None

    reg = result.registered
    assert reg["model_uri"] == "models:/moco-digits/1" and reg["champion"] is True
    import mlflow

    mlflow.set_tracking_uri(result.tracking_uri)
    mv = client.get_model_version("moco-digits", "1")
    assert mv.run_id == best.run_id
    # the best trial's encoder is its epoch the monitor scored highest (tracking.publish: best)
    history = client.get_metric_history(best.run_id, "eval/knn_top1")
    knn = list({m.step: m.value for m in sorted(history, key=lambda m: m.step)}.values())  # by epoch
    best_epoch = len(knn) - knn[::-1].index(max(knn))  # the later one of a tie
    assert (mv.tags["moco.published"], mv.tags["moco.epoch"]) == ("best", str(best_epoch))
    pkg = registry.resolve_ref("models:/moco-digits@champion", tmp_path / "pulled", result.tracking_uri)
    meta = registry.read_encoder_meta(pkg)
    assert meta["source_run_id"] == best.run_id and meta["moco"]["queue_size"] == 16
    summary = format_result(result)
    assert "pull:   moco encoders pull models:/moco-digits/1 --out encoder/" in summary
    assert summary.index(best.trial_id) < summary.index(stopped[0].trial_id)  # ranked


def _finished_trials(sweep_dir: Path) -> list[str]:
    out = []
    for rec in sweep_dir.glob("*/trials/*/moco_run.json"):
        try:
            if json.loads(rec.read_text())["status"] == "finished":
                out.append(rec.parent.name)
        except (OSError, ValueError):
            continue  # being written
    return out


def _alive_train_actors(address: str) -> list[str]:
    from ray.util.state import list_actors

    alive = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
    return [a.class_name for a in alive if a.class_name in ("TrainController", "RayTrainWorker")]


@pytest.mark.slow
def test_resume_after_driver_stopped_or_killed_does_not_rerun_finished_trials(
    ray_cluster, digits_root, tmp_path
):
    """A sweep over the three mechanisms: its driver stopped (Ctrl-C) after a trial finished stops its
    trials and says how to continue; continued, then SIGKILLed; continued again, it finishes without
    training a finished trial again, and the parent run gets the metric-vs-K figure."""
    from mlflow.tracking import MlflowClient

    from service.cli import EXIT_INTERRUPTED
    from service.sweep import SweepError, tune_sweep
    from service.sweep.trial import TAG_TRIAL_STARTS

    # the paper's comparison in small: one trial per mechanism (docs/mechanisms.md)
    overrides = tune_overrides(
        digits_root,
        tmp_path,
        "tune.space.moco.mechanism=[moco, end_to_end, memory_bank]",
        "tune.space.moco.temperature=null",
        "tune.space.moco.queue_size=null",
        "tune.asha=null",
    )
    args = [sys.executable, "-m", "service.cli", "tune", str(TUNE_YAML)]
    for o in overrides:
        args += ["--set", o]
    address = ray_cluster.get_runtime_context().gcs_address
    env = dict(os.environ, RAY_ADDRESS=address, PYTHONUNBUFFERED="1")

    def drive(extra: list[str], log: Path, until: Any, sig: int) -> subprocess.Popen:
        with log.open("wb") as out:
            driver = subprocess.Popen(
                args + extra, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
            )
            deadline = time.monotonic() + 240
            while not until() and driver.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert driver.poll() is None, log.read_text()[-3000:]
            driver.send_signal(sig)
            driver.wait(timeout=120)  # a stopped sweep ends in bounded time
        return driver

    # stopped (Ctrl-C; SIGTERM takes the same path): trials stopped, sweep marked stopped, resume told
    log = tmp_path / "driver.log"
    driver = drive([], log, lambda: _finished_trials(tmp_path / "runs"), signal.SIGINT)
    done_before = _finished_trials(tmp_path / "runs")
    shown = log.read_text()
    sweep_dir = next((tmp_path / "runs").glob("digits-tune-*"))
    assert driver.returncode == EXIT_INTERRUPTED, shown[-3000:]
    assert f"sweep {sweep_dir.name} stopped; continue it with: moco tune FILE --resume" in shown, shown[
        -3000:
    ]
    assert json.loads((sweep_dir / "moco_sweep.json").read_text())["status"] == "stopped"
    deadline = time.monotonic() + 30
    while _alive_train_actors(address) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive_train_actors(address)  # no trial trains on after its sweep stopped
    # the sweep's terminal: our lines, not Ray Tune's configuration box and hints (it prints them even
    # at verbose=0 unless its classic output is chosen)
    assert "trial " in shown and "started" in shown, shown[-3000:]
    tune_lines = ["Configuration for experiment", "View detailed results here", "tensorboard --logdir"]
    tune_lines += ["Stop signal received", "Tuner.restore"]  # Tune's stop hints: ours say how to go on
    for noise in tune_lines:
        assert noise not in shown, shown[-3000:]

    # continued, then killed (SIGKILL) as soon as a trial trains again
    log = tmp_path / "driver-resumed.log"
    drive(["--resume"], log, lambda: "started" in log.read_text(), signal.SIGKILL)
    assert json.loads((sweep_dir / "moco_sweep.json").read_text())["status"] == "running"
    time.sleep(2)  # let Ray reap the dead driver's trial actors

    cfg = load_config(TUNE_YAML, overrides)
    result = tune_sweep(cfg, resume=True)
    assert result.name == sweep_dir.name
    assert len(result.trials) == 3 and all(t.status == "finished" for t in result.trials)
    assert result.metric == "eval/knn_top1"  # the default for digits' multi-class labels
    client = MlflowClient(result.tracking_uri)
    children = {r.info.run_id: r for r in _children(client, result.parent_run_id)}
    assert set(children) == {t.run_id for t in result.trials}  # no trial got a second child run
    for t in result.trials:
        run = children[t.run_id]
        steps = [m.step for m in client.get_metric_history(t.run_id, "train/loss")]
        assert steps == list(range(1, 7))  # 2 epochs x 3 steps, each once
        if t.trial_id in done_before:  # finished before the kill: not trained again
            assert run.data.tags[TAG_TRIAL_STARTS] == "1"
            assert "train/resumed_at_step" not in run.data.metrics
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"
    assert sorted(t.values["moco.mechanism"] for t in result.trials) == ["end_to_end", "memory_bank", "moco"]
    plots = {Path(a.path).name for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert "metric_vs_negatives.png" in plots  # the shape of the paper's Fig. 3: one line per mechanism
    assert result.registered and result.registered["model_uri"].startswith("models:/moco-digits/")
    with pytest.raises(SweepError, match="nothing to resume"):
        tune_sweep(cfg, resume=True)
