"""``moco quickstart``: digits -> pretrain on a local Ray cluster -> kNN vs random init -> registry."""

from __future__ import annotations

from pathlib import Path

import torch

from moco_core.backbones import create_backbone
from moco_core.config import ExperimentConfig, load_config
from moco_core.data import DataError, read_dataset
from moco_core.digits import write_digits
from moco_core.evaluate import extract_features, knn_metric
from moco_core.pipeline import eval_loader

from .cli import CliError
from .progress import ProgressPrinter
from .train import backbone_from_checkpoint, load_checkpoint_dict, pretrain

RECIPE = Path(__file__).resolve().parents[1] / "experiments" / "digits.yaml"


def knn_on_test(cfg: ExperimentConfig, backbone: torch.nn.Module) -> tuple[str, float]:
    """kNN of ``backbone`` features: train partition as the bank, test partition as the queries."""
    parts = read_dataset(cfg.data.root, cfg.data.splits_dir, cfg.data.label_columns, ("train", "test"))
    tr, te = parts["train"], parts["test"]
    f_tr = extract_features(backbone, eval_loader(cfg.data, tr))
    f_te = extract_features(backbone, eval_loader(cfg.data, te))
    return knn_metric(f_tr, tr.targets, f_te, te.targets, tr.label_kind, len(tr.classes),
                      k=cfg.eval.knn_k, t=cfg.eval.knn_t)


def ensure_digits(root: Path) -> None:
    if (root / "train.csv").is_file():
        try:
            read_dataset(root, partitions=("train", "val", "test"), check_files=True)
            return
        except DataError:
            pass  # rewritten below (write_digits refuses folders that are not a digits dataset)
    write_digits(root)


def quickstart(workdir: Path = Path("."), epochs: int | None = None, workers: int | None = None) -> int:
    if not RECIPE.is_file():
        raise CliError(f"the quickstart recipe {RECIPE} is missing; run from a checkout of this project")
    workdir = workdir.resolve()
    data_root = workdir / "data" / "digits"
    printer = ProgressPrinter()
    printer.message(f"[1/4] dataset: scikit-learn's digits -> {data_root}")
    ensure_digits(data_root)
    overrides = [f"data.root={data_root}", f"run.storage_path={workdir / 'runs'}",
                 f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}"]
    if epochs is not None:
        overrides.append(f"optim.epochs={epochs}")
    if workers is not None:
        overrides.append(f"scaling.workers={workers}")
    cfg = load_config(RECIPE, overrides)
    printer.message(f"[2/4] pretrain: {cfg.model.arch}, MoCo {cfg.augment.recipe}, {cfg.optim.epochs} epochs, "
                    f"{cfg.scaling.workers} Ray worker(s)")
    result = pretrain(cfg, printer=printer)

    printer.message("[3/4] evaluate: kNN on the test partition, against a random-init encoder")
    trained = backbone_from_checkpoint(cfg, _final_state(result.checkpoint_path))
    torch.manual_seed(cfg.run.seed)
    random_init = create_backbone(cfg.model.arch, cfg.data.channels, cfg.model.small_image_stem)
    name, ours = knn_on_test(cfg, trained)
    _, base = knn_on_test(cfg, random_init)
    print(f"\n  {'encoder':<22}{name}")
    print(f"  {'MoCo (this run)':<22}{ours:.4f}")
    print(f"  {'random init':<22}{base:.4f}")
    print(f"  {'difference':<22}{ours - base:+.4f}")
    if ours <= base:
        print("\n  A random-init ResNet-18 is a strong kNN baseline on the digits, and a few CPU epochs do not\n"
              "  beat it yet: this run checks the whole pipeline. Measure a longer run with `moco evaluate`\n"
              "  (docs/evaluate.md, 'What the digits show').")

    printer.message("\n[4/4] registry")
    reg = result.registered
    if reg:
        champ = "and is now the champion" if reg["champion"] else "(the champion stays: it scored higher)"
        print(f"  registered {reg['model_uri']} {champ}")
    db = workdir / "mlflow.db"
    print(f"\nrun folder:  {result.run_folder}")
    print(f"MLflow run:  {result.mlflow_run_id}")
    print(f"browse:      cd {workdir} && mlflow ui --backend-store-uri sqlite:///{db}   # http://127.0.0.1:5000")
    if reg:
        print(f"pull:        MLFLOW_TRACKING_URI=sqlite:///{db} moco encoders pull "
              f"models:/{reg['name']}@champion --out encoder/")
    return 0


def _final_state(checkpoint_path: str) -> dict:
    return load_checkpoint_dict(checkpoint_path)
