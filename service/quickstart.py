"""``moco quickstart``: digits -> pretrain on a local Ray cluster -> kNN vs random init -> registry."""

from __future__ import annotations

from pathlib import Path

import torch

from moco_core.backbones import backbone_for
from moco_core.checkpoint import backbone_from_checkpoint, load_checkpoint
from moco_core.config import ExperimentConfig, load_config
from moco_core.data import DataError, read_dataset
from moco_core.digits import write_digits
from moco_core.eval import ProtocolSettings, Task, run_protocols

from .next_steps import browse_and_pull
from .pretrain import pretrain
from .progress import ProgressPrinter
from .recipes import recipe_file

RECIPE = "digits.yaml"  # a shipped recipe (service.recipes: the checkout's experiments/, or the wheel's)
FRACTIONS = (0.05, 1.0)  # about 5 labelled images per digit, and all of them


def quickstart(workdir: Path = Path("."), epochs: int | None = None, workers: int | None = None) -> int:
    """The four steps, each announced; returns the exit code."""
    path = recipe_file(RECIPE)
    workdir = workdir.resolve()
    data_root = workdir / "data" / "digits"
    printer = ProgressPrinter()
    printer.message(f"[1/4] dataset: scikit-learn's digits -> {data_root}")
    ensure_digits(data_root)
    cfg = load_config(path, recipe_overrides(workdir, data_root, epochs, workers))
    printer.message(
        f"[2/4] pretrain: {cfg.model.arch}, MoCo {cfg.augment.recipe}, {cfg.optim.epochs} epochs, "
        f"{cfg.scaling.workers} Ray worker(s)"
    )
    result = pretrain(cfg, printer=printer)

    printer.message("[3/4] evaluate: kNN on the test partition, against a random-init encoder")
    trained = backbone_from_checkpoint(cfg, load_checkpoint(result.published_checkpoint_path))
    torch.manual_seed(cfg.run.seed)
    random_init = backbone_for(cfg)
    print_scores(cfg, knn_on_test(cfg, {"MoCo (this run)": trained, "random init": random_init}))

    printer.message("\n[4/4] registry")
    reg = result.registered
    if reg:
        champ = "and is now the champion" if reg["champion"] else "(the champion stays: it scored higher)"
        print(f"  registered {reg['model_uri']} {champ}")
    uri = result.tracking_uri  # workdir/mlflow.db, unless MLFLOW_TRACKING_URI (--tracking-uri) says otherwise
    print(f"\nrun folder:  {result.run_folder}")
    print(f"MLflow run:  {result.mlflow_run_id}\n")
    ref = f"models:/{reg['name']}@champion" if reg else None
    print("\n".join(browse_and_pull(uri, ref, env=f"MLFLOW_TRACKING_URI={uri}")))
    return 0


def ensure_digits(root: Path) -> None:
    """The digits under ``root``: kept when they read back whole, written (again) otherwise."""
    if (root / "train.csv").is_file():
        try:
            read_dataset(root, partitions=("train", "val", "test"), check_files=True)
            return
        except DataError:
            pass  # rewritten below (write_digits refuses folders that are not a digits dataset)
    write_digits(root)


def recipe_overrides(workdir: Path, data_root: Path, epochs: int | None, workers: int | None) -> list[str]:
    """experiments/digits.yaml with everything under ``workdir``."""
    overrides = [
        f"data.root={data_root}",
        f"run.storage_path={workdir / 'runs'}",
        f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
    ]
    if epochs is not None:
        overrides.append(f"optim.epochs={epochs}")
    if workers is not None:
        overrides.append(f"scaling.workers={workers}")
    return overrides


def knn_on_test(cfg: ExperimentConfig, encoders: dict[str, torch.nn.Module]) -> dict[str, dict[float, float]]:
    """kNN top-1 of each encoder on the test partition with ``FRACTIONS`` of the train labels (stratified,
    seeded); the images are decoded once for all encoders."""
    parts = read_dataset(cfg.data.root, cfg.data.splits_dir, cfg.data.label_columns, ("train", "val", "test"))
    task = Task(parts, cfg.data)
    settings = ProtocolSettings(knn_k=cfg.eval.knn_k, knn_t=cfg.eval.knn_t, bootstrap=0)
    return {
        name: {
            r.fraction: r.value
            for r in run_protocols(bb, task, ["knn"], FRACTIONS, settings, seed=cfg.run.seed)
        }
        for name, bb in encoders.items()
    }


def print_scores(cfg: ExperimentConfig, scores: dict[str, dict[float, float]]) -> None:
    """The table of kNN scores, the difference, and what a run that does not beat the baseline means."""
    ours, base = scores["MoCo (this run)"], scores["random init"]
    print(
        f"\n  {'kNN top-1 (k=' + str(cfg.eval.knn_k) + ')':<22}"
        + "".join(f"{f'{f:.0%} labels':>14}" for f in FRACTIONS)
    )
    for name, row in scores.items():
        print(f"  {name:<22}" + "".join(f"{row[f]:>14.4f}" for f in FRACTIONS))
    print(f"  {'difference':<22}" + "".join(f"{ours[f] - base[f]:>+14.4f}" for f in FRACTIONS))
    if ours[FRACTIONS[0]] <= base[FRACTIONS[0]]:
        print(
            "\n  This run does not beat a random-init encoder with few labels; on the digits a random-init\n"
            "  ResNet-18 is a strong baseline. See docs/evaluate.md, 'What the digits show'."
        )


__all__ = ["quickstart"]
