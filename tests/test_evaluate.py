"""Downstream evaluation on real digits: a Ray-pretrained encoder against a random init, the metrics in
closed form, label fractions, and `moco evaluate` / `moco encoders` end to end against a real MLflow
store. No mocks: real Ray Train, real MLflow (sqlite), real torch."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from moco_core.data import load_image, read_dataset
from moco_core.eval import (
    EvaluationError,
    auroc,
    bootstrap_ci,
    extract_features,
    label_subset,
    leave_one_out_auroc,
    per_label_auroc,
    roc_curve,
    task_score,
)
from moco_core.pipeline import eval_loader
from service.cli import EXIT_FAIL, EXIT_OK, main
from service.registry import ENCODER_JSON, WEIGHTS, load_encoder

# The encoder is the session's digits run (tests/conftest.py, DIGITS_RUN: 2 gloo workers, 8 epochs).
FEW = 0.05  # about 5 labels per digit: where a pretrained encoder should help most
# Gains over the random init at FEW, that run with run.seed 0, 1, 2 (moco evaluate, knn k 20):
# kNN +0.181, +0.106, +0.186; linear probe (51 labels: noisier) +0.081, +0.031, +0.089.
MARGIN = {"knn": 0.05, "linear": 0.01}


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _relabel(root: Path, out: Path, header: list[str], label) -> Path:
    """Splits for the digits images in ``root`` with the label columns ``label(partition, digit)``."""
    for part in ("train", "val", "test"):
        with open(root / f"{part}.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        _write_csv(
            out / f"{part}.csv", ["Path", *header], [[r["Path"], *label(part, int(r["digit"]))] for r in rows]
        )
    return out


# ---------------------------------------------------------------------------------------------
# metrics in closed form


def test_auroc_and_roc_curve_on_a_hand_checked_example():
    # positives 0.9, 0.8, 0.3; negatives 0.8, 0.1. Pairs: 0.9>0.8, 0.9>0.1, 0.8=0.8 (half), 0.8>0.1,
    # 0.3<0.8, 0.3>0.1 -> 4.5 of 6 = 0.75
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    labels = np.array([1, 1, 0, 1, 0])
    assert auroc(scores, labels) == 0.75
    fpr, tpr = roc_curve(scores, labels)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 1, 1])
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)
    assert np.isnan(auroc(scores, np.ones(5)))  # one class: undefined, not 0 or 1


def test_our_auroc_equals_scikit_learns_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    scores, labels = rng.random(5000).round(2), rng.random(5000) < 0.2  # many ties
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_on_a_binary_digits_task_matches_the_pair_count(digits_root):
    """Task "is it a 0" on the digits test partition. Scores: 1 for every 0 except the first ``k``
    zeros, which score 0 like the other digits. Each of those k positives ties with every negative,
    so AUROC = 1 - k / (2 * n_pos), exactly."""
    test = read_dataset(digits_root, partitions=("test",))["test"]
    y = (test.targets == 0).astype(np.float32)[:, None]  # N x 1
    n_pos = int(y.sum())
    assert n_pos == 35  # 178 zeros in 1797 digits, about 20 % of them in the stratified test partition
    for k in (0, 3, 35):
        s = y.copy()
        s[np.flatnonzero(y[:, 0])[:k], 0] = 0.0
        expected = 1 - k / (2 * n_pos)
        assert auroc(s[:, 0], y[:, 0]) == pytest.approx(expected, abs=1e-12)
        assert task_score(s, y, "binary") == pytest.approx(expected, abs=1e-12)
        assert per_label_auroc(s, y) == [pytest.approx(expected, abs=1e-12)]
    assert auroc(1 - y[:, 0], y[:, 0]) == 0.0  # every positive ranked below every negative
    half = y.copy()
    half[1::2] = 0.0  # positives at odd rows tie with every negative
    lo, hi = bootstrap_ci(half, y, "binary", n_boot=200, seed=1)
    assert 0.5 < lo < auroc(half[:, 0], y[:, 0]) < hi < 1.0


def test_top1_bootstrap_interval_brackets_the_score():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 4, 500)
    scores = np.eye(4)[np.where(rng.random(500) < 0.7, targets, (targets + 1) % 4)]  # 70 % right
    acc = task_score(scores, targets, "multiclass")
    lo, hi = bootstrap_ci(scores, targets, "multiclass", n_boot=500, seed=0)
    assert lo < acc < hi and hi - lo < 0.1
    assert bootstrap_ci(scores, targets, "multiclass", n_boot=500, seed=0) == (lo, hi)  # seeded


def test_leave_one_out_auroc_equals_scoring_each_smaller_set():
    rng = np.random.default_rng(3)
    for n_pos in (1, 2, 17):
        labels = np.r_[np.ones(n_pos), np.zeros(23)]
        scores = rng.integers(0, 6, len(labels)).astype(float)  # many ties
        expected = [auroc(np.delete(scores, i), np.delete(labels, i)) for i in range(len(labels))]
        np.testing.assert_allclose(leave_one_out_auroc(scores, labels), expected, atol=1e-12)


@pytest.mark.parametrize("kind", ["multiclass", "binary"])
def test_bca_interval_agrees_with_scipys(kind):
    from scipy.stats import bootstrap

    rng = np.random.default_rng(1)
    if kind == "multiclass":
        targets = rng.integers(0, 3, 300)
        scores = np.eye(3)[np.where(rng.random(300) < 0.8, targets, (targets + 1) % 3)]
        data, statistic = ((scores.argmax(1) == targets).astype(float),), np.mean
    else:  # 80 rows, AUROC 0.97: a skewed distribution, where BCa and percentile part
        targets = (rng.random((80, 1)) < 0.3).astype(float)
        scores = 2.5 * targets + rng.normal(0, 0.8, (80, 1))
        data, statistic = (scores[:, 0], targets[:, 0]), auroc
    bca, percentile = (
        bootstrap(data, statistic, paired=True, vectorized=False, n_resamples=8000, method=m, rng=rng)
        for m in ("BCa", "percentile")
    )
    lo, hi = bootstrap_ci(scores, targets, kind, n_boot=8000, seed=0)
    assert lo == pytest.approx(bca.confidence_interval.low, abs=0.006)
    assert hi == pytest.approx(bca.confidence_interval.high, abs=0.006)
    if kind == "binary":  # the agreement is BCa's, not the percentile interval's
        assert percentile.confidence_interval.low - lo > 0.015


# ---------------------------------------------------------------------------------------------
# label fractions


def test_the_linear_probe_is_sized_in_epochs_over_the_labelled_set():
    from moco_core.eval.heads import LinearProbeConfig

    cfg = LinearProbeConfig()  # 100 epochs of batch 256, at least 300 steps
    assert cfg.steps(51) == 300  # 5 % of the digits: one step an epoch, the floor
    assert cfg.steps(1_000) == 400 and cfg.steps(100_000) == 100 * 391
    assert LinearProbeConfig(epochs=3, min_steps=0, batch_size=32).steps(120) == 12
    from moco_core.eval import EvaluationError
    from service.cli.evaluate import parse_evaluate_args, settings_of

    args = ["models:/m@a", "--data", "d", "--linear-epochs"]
    assert settings_of(parse_evaluate_args([*args, "7"])).linear.epochs == 7
    with pytest.raises(EvaluationError, match="--linear-epochs must be at least 1, not 0"):
        settings_of(parse_evaluate_args([*args, "0"]))


@pytest.mark.parametrize("label_kind", ["multiclass", "multilabel"])
def test_the_linear_probes_grid_trains_each_point_as_it_would_alone(label_kind):
    """All points of the lr x weight-decay grid train in one batched loop: the point kept has the best
    val score of the points trained one by one, and the same test scores as its own run."""
    from moco_core.eval.heads import LinearProbeConfig
    from moco_core.eval.linear_probe import linear_probe

    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(n, 16, generator=g) for n in (120, 60, 60)]  # train, val, test
    if label_kind == "multiclass":
        targets = [np.asarray(f[:, :3].argmax(dim=1) + (f[:, 3] > 1.0).long()) for f in feats[:2]]
        n_out = 4
    else:
        targets = [np.asarray((f[:, :2] > 0).int()) for f in feats[:2]]
        n_out = 2
    args = (feats[0], targets[0], feats[1], targets[1], feats[2], label_kind, n_out)
    grid = LinearProbeConfig(
        lrs=(1e-3, 3e-2, 3e-1), weight_decays=(0.0, 1e-1), epochs=10, min_steps=0, batch_size=32
    )
    best = linear_probe(*args, cfg=grid)
    alone = {
        (lr, wd): linear_probe(
            *args,
            cfg=LinearProbeConfig(lrs=(lr,), weight_decays=(wd,), epochs=10, min_steps=0, batch_size=32),
        )
        for lr in grid.lrs
        for wd in grid.weight_decays
    }
    assert best.val_score == max(r.val_score for r in alone.values())
    own = alone[(best.hparams["lr"], best.hparams["weight_decay"])]
    assert own.val_score == best.val_score
    np.testing.assert_allclose(best.test_scores, own.test_scores, atol=1e-5)
    assert len({round(r.val_score, 6) for r in alone.values()}) > 1  # the grid's points do differ


def test_label_fractions_are_stratified_and_seeded(digits_root):
    train = read_dataset(digits_root, partitions=("train",))["train"]
    counts = np.bincount(train.targets)
    idx = label_subset(train, 0.1, seed=3)
    assert list(np.bincount(train.targets[idx], minlength=10)) == [
        int(np.floor(0.1 * c + 0.5)) for c in counts
    ]
    assert np.array_equal(idx, label_subset(train, 0.1, seed=3))
    assert not np.array_equal(idx, label_subset(train, 0.1, seed=4))
    assert np.array_equal(label_subset(train, 1.0), np.arange(len(train)))
    with pytest.raises(
        EvaluationError,
        match=r"label fraction 0\.001 leaves class '\d' with no example.*"
        r"at least 0\.00[45]",
    ):
        label_subset(train, 0.001)
    with pytest.raises(EvaluationError, match="not in"):
        label_subset(train, 1.5)


# ---------------------------------------------------------------------------------------------
# one encoder pretrained through Ray Train, evaluated through the CLI


def test_lincls_is_the_reference_linear_classification(digits_root):
    """A linear head on the frozen encoder, trained on augmented views with the reference's schedule."""
    from dataclasses import replace

    from moco_core.backbones import create_backbone
    from moco_core.config import DataConfig
    from moco_core.eval import ProtocolSettings, Task, run_protocols
    from moco_core.eval.finetune import lr_at
    from moco_core.eval.heads import LINCLS
    from moco_core.eval.protocols import _train_batches

    assert (LINCLS.lr, LINCLS.weight_decay, LINCLS.epochs, LINCLS.batch_size) == (30.0, 0.0, 100, 256)
    assert [lr_at(e, LINCLS) for e in (0, 59, 60, 79, 80, 99)] == pytest.approx([30, 30, 3, 3, 0.3, 0.3])
    parts = read_dataset(digits_root)
    task = Task(parts, DataConfig(root=str(digits_root), image_size=16, channels=1, num_workers=0))
    idx = np.arange(0, len(parts["train"]), 10)
    batches = _train_batches(task, idx, 32, seed=0, augment=True)
    (a, ia), (b, _) = next(iter(batches(0))), next(iter(batches(1)))
    assert a.shape == (32, 1, 16, 16) and set(ia.tolist()) <= set(idx.tolist())
    assert not torch.equal(a, b)  # another epoch: other crops, another order
    torch.manual_seed(0)
    backbone = create_backbone("resnet18", 1, True)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    settings = replace(ProtocolSettings(bootstrap=0), lincls=replace(LINCLS, epochs=2, max_steps_per_epoch=2))
    (result,) = run_protocols(backbone, task, ["lincls"], [0.1], settings)
    assert result.protocol == "lincls" and result.hparams["frozen"] == 1 and result.hparams["lr"] == 30.0
    assert 0.0 <= result.value <= 1.0
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())  # left untouched


@pytest.fixture(scope="module")
def pretrained(digits_run):
    """The session's digits run (tests/conftest.py: 2 gloo workers, 8 epochs)."""
    return digits_run


@pytest.fixture
def store(pretrained, monkeypatch, tmp_path):
    """The pretraining run's MLflow store as MLFLOW_TRACKING_URI, in an empty working directory."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", pretrained.uri)
    monkeypatch.chdir(tmp_path)
    return pretrained


@pytest.fixture(scope="module")
def evaluated(pretrained):
    """`moco evaluate models:/moco-digits@champion` with kNN and the linear probe at two label
    fractions, against a random init, tracked in the pretraining run's store."""
    out = pretrained.tmp / "eval" / "results.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", pretrained.uri)
        mp.chdir(pretrained.tmp)
        code = main(
            [
                "evaluate",
                "models:/moco-digits@champion",
                "--data",
                str(pretrained.root),
                "--protocol",
                "knn",
                "linear",
                "--label-fraction",
                str(FEW),
                "1.0",
                "--baseline",
                "random",
                "--knn-k",
                "20",
                "--bootstrap",
                "200",
                "--out",
                str(out),
            ]
        )
    return SimpleNamespace(code=code, report=json.loads(out.read_text()) if out.is_file() else None)


def _row(report: dict, protocol: str, fraction: float) -> dict:
    (row,) = [r for r in report["results"] if r["protocol"] == protocol and r["label_fraction"] == fraction]
    return row


@pytest.mark.slow
def test_pretrained_encoder_beats_random_init_with_few_labels(evaluated):
    assert evaluated.code == EXIT_OK
    for protocol in ("knn", "linear"):
        row = _row(evaluated.report, protocol, FEW)
        enc, base = row["encoder"]["value"], row["baseline"]["value"]
        print(f"{protocol} at {FEW}: MoCo {enc:.4f} vs random init {base:.4f}")
        assert row["metric"] == "top1" and row["difference"] == pytest.approx(enc - base)
        margin = MARGIN[protocol]
        assert enc > base + margin, (
            f"{protocol}: {enc:.4f} is not {margin} above the random init's {base:.4f}"
        )


@pytest.mark.slow
def test_evaluate_writes_json_table_and_a_linked_mlflow_run(evaluated, pretrained, capsys):
    report = evaluated.report
    assert report["encoder"]["source_run_id"] == pretrained.result.mlflow_run_id
    assert report["data"]["label_kind"] == "multiclass" and report["data"]["pretraining_data"] is True
    assert report["data"]["images"] == {"train": 1078, "val": 359, "test": 360}
    assert [(r["protocol"], r["label_fraction"]) for r in report["results"]] == [
        ("knn", FEW),
        ("knn", 1.0),
        ("linear", FEW),
        ("linear", 1.0),
    ]
    few = _row(report, "linear", FEW)
    counts = np.bincount(read_dataset(pretrained.root, partitions=("train",))["train"].targets)
    assert few["labelled_images"] == sum(int(np.floor(FEW * c + 0.5)) for c in counts)  # per digit
    assert set(few["encoder"]["hparams"]) == {"lr", "weight_decay"}
    for row in report["results"]:
        for side in (row["encoder"], row["baseline"]):
            lo, hi = side["ci95"]
            assert 0 <= lo <= side["value"] <= hi <= 1

    m = report["mlflow"]
    client = MlflowClient(pretrained.uri)
    run = client.get_run(m["run_id"])
    source = client.get_run(pretrained.result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["moco.source_run_id"] == source.info.run_id
    assert run.info.experiment_id == source.info.experiment_id == m["experiment_id"]
    metrics = run.data.metrics
    assert metrics["eval/knn_top1"] == pytest.approx(_row(report, "knn", 1.0)["encoder"]["value"])
    assert metrics["baseline/linear_top1/frac_0.05"] == pytest.approx(few["baseline"]["value"])
    assert metrics["diff/linear_top1/frac_0.05"] == pytest.approx(few["difference"])
    assert metrics["eval/linear_top1/frac_0.05/ci_low"] == pytest.approx(few["encoder"]["ci95"][0])
    assert run.data.params["label_fractions"] == f"{FEW:g} 1" and run.data.params["baseline"] == "random"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "evaluation.json" in artifacts
    assert plots == {"plots/label_fraction.png", "plots/retrieval.png"}  # no ROC: not a binary task
    local = client.download_artifacts(run.info.run_id, "plots/retrieval.png", str(pretrained.tmp / "dl"))
    assert Image.open(local).size[0] > 500  # a grid: query + 5 neighbours for each of two encoders


@pytest.mark.slow
def test_pull_then_load_encoder_gives_the_training_time_features(store, tmp_path, capsys):
    assert (
        main(["encoders", "pull", "models:/moco-digits@champion", "--out", str(tmp_path / "enc")]) == EXIT_OK
    )
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == [ENCODER_JSON, WEIGHTS]
    encoder = load_encoder(str(tmp_path / "enc"))
    cfg = store.cfg
    test = read_dataset(cfg.data.root, partitions=("test",))["test"]
    images = eval_loader(cfg.data, test)
    pulled = extract_features(encoder, images)
    trained = extract_features(store.trained, images)
    assert pulled.shape == (360, 512)
    assert torch.equal(pulled, trained)
    # the package's preprocessing of a decoded image is the training-time eval view (resized by
    # torchvision there, by PIL into the working resolution here: within two gray levels)
    uint8 = load_image(test.paths[0], 1)  # 1 x 32 x 32, as `moco data digits` writes it
    batch, _ = next(iter(images))
    torch.testing.assert_close(encoder.preprocess(uint8), batch[0], atol=2 / 255 / 0.226, rtol=0)


@pytest.mark.slow
def test_encoders_list_shows_versions_aliases_and_scores(store, capsys):
    assert main(["encoders", "list"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "moco-digits  aliases: champion=v1" in out
    assert "v1" in out and "@champion" in out and store.result.mlflow_run_id in out
    # the score the champion rule compares: the kNN monitor with 5 % of the labels (digits.yaml)
    assert re.search(r"v1 +eval/knn_top1@0\.05 = 0\.\d{4} ", out)


@pytest.mark.slow
def test_binary_task_knn_and_finetune_from_a_run_id(store, ray_cluster, tmp_path, capsys):
    """A binary task derived from the digits (is it a 0?), the encoder named by its run id, the images
    read from a prepared store; fine-tuning for one short epoch; ROC curves among the plots."""
    from moco_core.store import read_index

    splits = _relabel(store.root, tmp_path / "splits", ["zero"], lambda _p, d: [int(d == 0)])
    out = tmp_path / "binary.json"
    # the images from a store prepared on first use (the labels still come from the CSVs of --splits-dir)
    code = main(
        [
            "evaluate",
            store.result.mlflow_run_id,
            "--data",
            str(store.root),
            "--splits-dir",
            str(splits),
            "--store",
            str(tmp_path / "store"),
            "--prepare",
            "--protocol",
            "knn",
            "finetune",
            "--finetune-epochs",
            "1",
            "--finetune-max-steps",
            "3",
            "--knn-k",
            "20",
            "--bootstrap",
            "100",
            "--out",
            str(out),
        ]
    )
    assert code == EXIT_OK
    printed = capsys.readouterr().out
    assert "AUROC" in printed and "finetune" in printed
    assert read_index(tmp_path / "store")["size"] == 16  # at the encoder's size (the digits': 16 px)
    report = json.loads(out.read_text())
    assert report["data"]["label_kind"] == "binary"
    knn, ft = report["results"]
    assert knn["metric"] == ft["metric"] == "auroc"
    assert list(knn["encoder"]["per_label"]) == ["zero"] and knn["encoder"]["value"] > 0.9  # a 0 is easy
    assert knn["encoder"]["per_label"]["zero"] == knn["encoder"]["value"]  # one label: mean = that label
    assert ft["encoder"]["hparams"]["best_epoch"] == 1 and 0 <= ft["encoder"]["value"] <= 1
    assert knn["baseline"] is None and knn["difference"] is None
    client = MlflowClient(store.uri)
    plots = {a.path for a in client.list_artifacts(report["mlflow"]["run_id"], "plots")}
    assert {"plots/roc_knn.png", "plots/roc_finetune.png", "plots/label_fraction.png"} <= plots


# ---------------------------------------------------------------------------------------------
# bad input: a clear error and exit code 1, before any work


@pytest.fixture
def package(store, tmp_path) -> Path:
    assert main(["encoders", "pull", "models:/moco-digits/1", "--out", str(tmp_path / "pkg")]) == EXIT_OK
    return tmp_path / "pkg"


def _fails(args: list[str], capsys, message: str) -> str:
    assert main(args) == EXIT_FAIL
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert message in err, err
    return err


@pytest.mark.slow
@pytest.mark.parametrize(
    "ref, message",
    [
        ("models:/moco-nope@champion", "no registered model named 'moco-nope'"),
        ("models:/moco-digits@best", "has no alias 'best'; aliases: @champion -> 1"),
        ("models:/moco-digits/9", "has no version '9'; versions: [1]"),
    ],
    ids=["unknown-model", "unknown-alias", "missing-version"],
)
def test_bad_encoder_refs(store, tmp_path, capsys, ref, message):
    _fails(["evaluate", ref, "--data", str(store.root), "--out", str(tmp_path / "r.json")], capsys, message)
    _fails(["encoders", "pull", ref, "--out", str(tmp_path / "enc")], capsys, message)
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "enc").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "header, label, message",
    [
        ([], lambda p, d: [], "has no labels"),
        (
            ["zero"],
            lambda p, d: [int(d == 0 and p != "test")],
            "label 'zero' has no positive (1) example in test",
        ),
        (["digit"], lambda p, d: [7], "single class ['7']"),
    ],
    ids=["no-labels", "binary-one-class-in-test", "one-class"],
)
def test_labels_that_the_protocols_cannot_use(package, store, tmp_path, capsys, header, label, message):
    splits = _relabel(store.root, tmp_path / "splits", header, label)
    _fails(
        ["evaluate", str(package), "--data", str(store.root), "--splits-dir", str(splits), "--no-track"],
        capsys,
        message,
    )


@pytest.mark.slow
def test_label_fraction_that_leaves_a_class_empty(package, store, capsys):
    _fails(
        [
            "evaluate",
            str(package),
            "--data",
            str(store.root),
            "--label-fraction",
            "0.1",
            "0.002",
            "--no-track",
        ],
        capsys,
        "label fraction 0.002 leaves class",
    )


@pytest.mark.slow
def test_colour_images_for_a_gray_encoder(package, tmp_path, capsys):
    rng = np.random.default_rng(0)
    root = tmp_path / "colour"
    for part in ("train", "val", "test"):
        for i in range(4):
            (root / part).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB").save(
                root / part / f"{i}.png"
            )
        _write_csv(root / f"{part}.csv", ["Path", "label"], [[f"{i}.png", i % 2] for i in range(4)])
    err = _fails(
        ["evaluate", str(package), "--data", str(root), "--no-track"],
        capsys,
        "the encoder takes 1-channel (gray) images, but the images of this dataset are in colour",
    )
    assert "train/0.png" in err


@pytest.mark.slow
def test_tampered_weights_are_refused_not_run(package, store, tmp_path, capsys):
    marker = tmp_path / "marker"
    from .test_registry import _Payload

    torch.save({"conv1.weight": _Payload(str(marker))}, package / WEIGHTS)
    _fails(
        ["evaluate", str(package), "--data", str(store.root), "--no-track"],
        capsys,
        "is not a plain tensor state_dict and was refused",
    )
    assert not marker.exists()
