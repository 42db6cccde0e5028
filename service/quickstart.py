"""``moco quickstart``: digits -> pretrain on a local Ray cluster -> kNN vs random init -> registry."""

from __future__ import annotations

from pathlib import Path

import torch

from moco_core.backbones import create_backbone
from moco_core.config import ExperimentConfig, load_config
from moco_core.data import DataError, read_dataset
from moco_core.digits import write_digits
from moco_core.downstream import ProtocolSettings, Task, run_protocols

from .cli import CliError
from .progress import ProgressPrinter
from .train import backbone_from_checkpoint, load_checkpoint_dict, pretrain

RECIPE = Path(__file__).resolve().parents[1] / "experiments" / "digits.yaml"
FRACTIONS = (0.05, 1.0)  # about 5 labelled images per digit, and all of them


def knn_on_test(cfg: ExperimentConfig, encoders: dict[str, torch.nn.Module]) -> dict[str, dict[float, float]]:
    """kNN top-1 of each encoder on the test partition with ``FRACTIONS`` of the train labels (stratified,
    seeded); the images are decoded once for all encoders."""
    parts = read_dataset(cfg.data.root, cfg.data.splits_dir, cfg.data.label_columns, ("train", "val", "test"))
    task = Task(parts, cfg.data)
    settings = ProtocolSettings(knn_k=cfg.eval.knn_k, knn_t=cfg.eval.knn_t, bootstrap=0)
    return {name: {r.fraction: r.value for r in run_protocols(bb, task, ["knn"], FRACTIONS, settings, seed=cfg.run.seed)}
            for name, bb in encoders.items()}


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
    scores = knn_on_test(cfg, {"MoCo (this run)": trained, "random init": random_init})
    ours, base = scores["MoCo (this run)"], scores["random init"]
    print(f"\n  {'kNN top-1 (k=' + str(cfg.eval.knn_k) + ')':<22}" + "".join(f"{f'{f:.0%} labels':>14}" for f in FRACTIONS))
    for name, row in scores.items():
        print(f"  {name:<22}" + "".join(f"{row[f]:>14.4f}" for f in FRACTIONS))
    print(f"  {'difference':<22}" + "".join(f"{ours[f] - base[f]:>+14.4f}" for f in FRACTIONS))
    if ours[FRACTIONS[0]] <= base[FRACTIONS[0]]:
        print("\n  This run does not beat a random-init encoder with few labels; on the digits a random-init\n"
              "  ResNet-18 is a strong baseline. See docs/evaluate.md, 'What the digits show'.")

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
