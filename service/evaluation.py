"""``moco evaluate``: what an encoder is worth downstream, with few labels, against a random init.

ENCODER (any reference :func:`service.registry.resolve_ref` understands) -> its package, loaded safely
-> the labelled dataset, checked against the encoder and the protocols -> ``moco_core.downstream`` runs
every protocol at every label fraction (and again on a random-init encoder of the same architecture
with ``--baseline random``) -> a table on the terminal, a JSON file, and an MLflow run in the source
run's experiment, tagged with the source run's id, holding the metrics, the JSON and the plots.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

BASELINES = ("random",)
DEFAULT_PROTOCOLS = ("knn", "linear")
CACHE_MAX_IMAGES = 20_000  # decode every image once into memory below this many images
JSON_NAME = "evaluation.json"


# ---------------------------------------------------------------------------------------------
# the command line


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``moco evaluate`` to the `moco` parser."""
    p = sub.add_parser(
        "evaluate", help="measure an encoder downstream: kNN, linear probe, fine-tune; vs a random init",
        description="Measure an encoder on a labelled dataset (seed format) with frozen-feature kNN, a "
                    "linear probe and/or fine-tuning, at one or more label fractions, on the test partition: "
                    "top-1 accuracy (multi-class) or AUROC (binary, multi-label) with a bootstrap 95%% "
                    "interval. Prints a table, writes a JSON file and logs an MLflow run linked to the "
                    "encoder's training run.",
    )
    p.add_argument("encoder", metavar="ENCODER",
                   help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID, a run id, or an encoder folder")
    p.add_argument("--data", required=True, metavar="ROOT", help="dataset root (holds train/, val/, test/)")
    p.add_argument("--splits-dir", default=None, metavar="DIR", help="folder of train.csv/val.csv/test.csv")
    p.add_argument("--label-columns", default=None, metavar="A,B", help="label columns (default: all but Path)")
    # names checked by moco_core.downstream (imported lazily: it loads torch, and `moco --help` stays fast)
    p.add_argument("--protocol", nargs="+", action="extend", default=None, dest="protocols",
                   metavar="{knn,linear,finetune}",
                   help=f"protocols to run (default: {' '.join(DEFAULT_PROTOCOLS)}; finetune trains the "
                        f"whole encoder and takes longest)")
    p.add_argument("--label-fraction", nargs="+", action="extend", type=float, default=None, metavar="F",
                   dest="fractions", help="fractions of the train labels to use, stratified and seeded, e.g. "
                                          "0.01 0.1 1.0 (default: 1.0)")
    p.add_argument("--baseline", choices=BASELINES, default=None,
                   help="also evaluate a random-init encoder of the same architecture, side by side")
    p.add_argument("--seed", type=int, default=0, help="seed of label fractions, heads, baseline and bootstrap")
    p.add_argument("--out", default=JSON_NAME, metavar="FILE.json", help=f"JSON results (default: {JSON_NAME})")
    p.add_argument("--no-track", action="store_true", help="do not log an MLflow run")
    p.add_argument("--knn-k", type=int, default=None, help="neighbours of the kNN vote (default: eval.knn_k)")
    p.add_argument("--knn-t", type=float, default=None, help="temperature of the kNN vote (default: eval.knn_t)")
    p.add_argument("--bootstrap", type=int, default=None, metavar="N",
                   help="test-set resamples of the 95%% interval (default 1000; 0: none)")
    p.add_argument("--finetune-epochs", type=int, default=None, metavar="N", help="fine-tune epochs (default 10)")
    p.add_argument("--finetune-lr", type=float, default=None, help="fine-tune learning rate (default 0.01)")
    p.add_argument("--finetune-max-steps", type=int, default=None, metavar="N",
                   help="cap each fine-tune epoch at N steps (quick trials)")
    p.set_defaults(func=cmd_evaluate)


def _settings(args: argparse.Namespace):
    from moco_core.downstream import EvaluationError, ProtocolSettings

    s = ProtocolSettings()
    knn = {"knn_k": args.knn_k, "knn_t": args.knn_t, "bootstrap": args.bootstrap}
    s = replace(s, **{k: v for k, v in knn.items() if v is not None})
    ft = {"epochs": args.finetune_epochs, "lr": args.finetune_lr, "max_steps_per_epoch": args.finetune_max_steps}
    s = replace(s, finetune=replace(s.finetune, **{k: v for k, v in ft.items() if v is not None}))
    problems = [f"--knn-k must be at least 1, not {s.knn_k}" if s.knn_k < 1 else "",
                f"--knn-t must be positive, not {s.knn_t}" if not s.knn_t > 0 else "",
                f"--bootstrap must be 0 or more, not {s.bootstrap}" if s.bootstrap < 0 else "",
                f"--finetune-epochs must be at least 1, not {s.finetune.epochs}" if s.finetune.epochs < 1 else "",
                f"--finetune-lr must be positive, not {s.finetune.lr}" if not s.finetune.lr > 0 else ""]
    if any(problems):
        raise EvaluationError("; ".join(p for p in problems if p))
    return s


def cmd_evaluate(args: argparse.Namespace) -> int:
    labels = None if args.label_columns is None else [c.strip() for c in args.label_columns.split(",") if c.strip()]
    report = evaluate(
        args.encoder, args.data, splits_dir=args.splits_dir, label_columns=labels,
        protocols=list(dict.fromkeys(args.protocols or DEFAULT_PROTOCOLS)),
        fractions=list(dict.fromkeys(args.fractions or [1.0])), baseline=args.baseline, seed=args.seed,
        settings=_settings(args), track=not args.no_track, out=Path(args.out),
    )
    print(format_table(report))
    print(f"\nresults: {args.out}")
    if report["mlflow"]:
        m = report["mlflow"]
        print(f"MLflow run: {m['run_id']} in experiment {m['experiment_name']!r} ({m['tracking_uri']})")
    return 0


# ---------------------------------------------------------------------------------------------
# the evaluation


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def evaluate(
    ref: str,
    root: str | Path,
    *,
    splits_dir: str | Path | None = None,
    label_columns: list[str] | None = None,
    protocols: Sequence[str] = DEFAULT_PROTOCOLS,
    fractions: Sequence[float] = (1.0,),
    baseline: str | None = None,
    seed: int = 0,
    settings: Any = None,
    track: bool = True,
    out: Path | None = None,
) -> dict[str, Any]:
    """Run the evaluation; returns the report (also written to ``out`` and, if ``track``, to MLflow)."""
    import torch

    from moco_core.backbones import create_backbone
    from moco_core.config import DataConfig
    from moco_core.data import dataset_fingerprint, read_dataset
    from moco_core.downstream import (
        ProtocolSettings, Task, check_channels, check_labels, encode, label_subset, run_protocols,
    )

    from . import registry, tracking

    settings = settings or ProtocolSettings()
    uri = tracking.resolve_tracking_uri(None)
    if track or not registry.is_local_ref(ref):
        registry.connect()  # models:/ and run references resolve against it; unreachable: TrackingError
    with tempfile.TemporaryDirectory(prefix="moco-evaluate-") as tmp:
        backbone, meta = registry.read_encoder_package(registry.resolve_ref(ref, tmp))

    parts = read_dataset(root, splits_dir, label_columns)
    check_labels(parts, protocols)
    check_channels(parts["train"], int(meta["in_channels"]))
    for f in fractions:  # every fault before any work
        label_subset(parts["train"], f, seed)
    n_images = sum(len(p) for p in parts.values())
    data = DataConfig(
        root=str(Path(root).expanduser().resolve()),
        splits_dir=str(Path(splits_dir).expanduser().resolve()) if splits_dir else None,
        image_size=int(meta["image_size"]), channels=int(meta["in_channels"]), label_columns=label_columns,
        num_workers=0, cache_decoded=n_images <= CACHE_MAX_IMAGES,
    )
    pre = registry.Preprocess(meta["image_size"], meta["in_channels"], meta["mean"], meta["std"])
    task = Task(parts, data, transform=pre.transform)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone.to(device)

    encoders = {"encoder": backbone}
    if baseline == "random":
        torch.manual_seed(seed)
        encoders["random init"] = create_backbone(meta["arch"], int(meta["in_channels"]),
                                                  bool(meta["small_image_stem"])).to(device)
    results, feats = {}, {}
    for who, net in encoders.items():
        _say(f"[{who}] features of {n_images} images ({device})")
        feats[who] = encode(net, task, device, settings.batch_size)
        results[who] = run_protocols(net, task, protocols, fractions, settings, seed, device,
                                     log=lambda m, who=who: _say(f"[{who}] {m}"), feats=feats[who])

    report = build_report(ref, meta, task, root, splits_dir, protocols, fractions, baseline, seed, settings,
                          results, fingerprint=dataset_fingerprint(parts["train"]))
    if track:
        report["mlflow"] = log_run(uri, ref, meta, task, report, results, feats, seed)
    if out is not None:
        write_json(out, report)
    return report


# ---------------------------------------------------------------------------------------------
# the report


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _side(r) -> dict[str, Any]:
    return {"value": r.value, "ci95": list(r.ci), "per_label": r.per_label, "hparams": r.hparams}


def build_report(ref, meta, task, root, splits_dir, protocols, fractions, baseline, seed, settings, results,
                 fingerprint) -> dict[str, Any]:
    train = task.parts["train"]
    rows = []
    base = {(r.protocol, r.fraction): r for r in results.get("random init", [])}
    for r in results["encoder"]:
        b = base.get((r.protocol, r.fraction))
        rows.append({
            "protocol": r.protocol, "label_fraction": r.fraction, "labelled_images": r.n_labelled,
            "metric": r.metric, "encoder": _side(r), "baseline": _side(b) if b else None,
            "difference": (r.value - b.value) if b else None,
        })
    return _finite({
        "encoder": {
            "ref": ref, "name": meta.get("name"), "arch": meta["arch"], "in_channels": meta["in_channels"],
            "image_size": meta["image_size"], "small_image_stem": meta["small_image_stem"],
            "source_run_id": meta.get("source_run_id"), "data_fingerprint": meta.get("data_fingerprint"),
        },
        "data": {
            "root": str(Path(root).expanduser().resolve()),
            "splits_dir": str(Path(splits_dir).expanduser().resolve()) if splits_dir else None,
            "label_kind": train.label_kind, "label_names": train.label_names, "classes": train.classes,
            "images": {k: len(p) for k, p in task.parts.items()}, "train_fingerprint": fingerprint,
            "pretraining_data": fingerprint == meta.get("data_fingerprint"),
        },
        "settings": {
            "protocols": list(protocols), "label_fractions": list(fractions), "baseline": baseline, "seed": seed,
            "knn_k": settings.knn_k, "knn_t": settings.knn_t, "bootstrap": settings.bootstrap,
            "linear": asdict(settings.linear), "finetune": asdict(settings.finetune),
        },
        "results": rows,
        "mlflow": None,
    })


def write_json(path: Path, report: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def _num(v: float | None, ci: list | None = None) -> str:
    if v is None:
        return "n/a"
    text = f"{v:.4f}"
    if ci and ci[0] is not None:
        text += f" [{ci[0]:.4f}, {ci[1]:.4f}]"
    return text


def format_table(report: dict[str, Any]) -> str:
    """The results side by side: encoder, baseline, difference; one row per protocol and fraction."""
    e, d = report["encoder"], report["data"]
    metric = "top-1 accuracy" if d["label_kind"] == "multiclass" else "AUROC (mean over labels)"
    what = f"{len(d['classes'])} classes" if d["label_kind"] == "multiclass" else ", ".join(d["label_names"])
    n = d["images"]
    lines = [
        f"encoder  {e['ref']}  ({e['arch']}, {e['in_channels']} channel(s), {e['image_size']} px)",
        f"data     {d['root']}: {d['label_kind']} ({what}); train {n['train']}, val {n['val']}, test {n['test']}"
        + ("  [the encoder was pretrained on this train partition]" if d["pretraining_data"] else ""),
        f"metric   {metric} on test, bootstrap 95% interval in brackets",
        "",
    ]
    has_base = any(r["baseline"] for r in report["results"])
    head = f"{'protocol':<9} {'fraction':>8} {'labels':>7}  {'encoder':<26}"
    if has_base:
        head += f"{'random init':<26}{'difference':>10}"
    lines.append(head)
    for r in report["results"]:
        enc = r["encoder"]
        line = (f"{r['protocol']:<9} {r['label_fraction']:>8g} {r['labelled_images']:>7}  "
                f"{_num(enc['value'], enc['ci95']):<26}")
        if has_base:
            b = r["baseline"]
            diff = r["difference"]
            line += f"{_num(b['value'], b['ci95']) if b else 'n/a':<26}"
            line += f"{diff:>+10.4f}" if diff is not None else f"{'n/a':>10}"
        lines.append(line)
    if d["label_kind"] != "multiclass":
        for r in report["results"]:
            per = r["encoder"]["per_label"] or {}
            if len(per) > 1:
                lines.append(f"  {r['protocol']} {r['label_fraction']:g} per label: "
                             + ", ".join(f"{k} {_num(v)}" for k, v in per.items()))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# MLflow


def _key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", text)


def metric_items(report: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics: ``eval/<protocol>_<metric>`` (label fraction 1), and per fraction
    ``eval/<protocol>_<metric>/frac_<f>`` with ``/ci_low``, ``/ci_high`` and ``/label_<name>``; the same
    under ``baseline/`` for the random init, and ``diff/...`` for the difference."""
    out: dict[str, float] = {}
    for r in report["results"]:
        name, frac = f"{r['protocol']}_{r['metric']}", f"frac_{r['label_fraction']:g}"
        for prefix, side in (("eval", r["encoder"]), ("baseline", r["baseline"])):
            if side is None:
                continue
            items = {f"{name}/{frac}": side["value"], f"{name}/{frac}/ci_low": side["ci95"][0],
                     f"{name}/{frac}/ci_high": side["ci95"][1]}
            if r["label_fraction"] == 1.0:
                items[name] = side["value"]
            for label, v in (side["per_label"] or {}).items():
                items[f"{name}/{frac}/label_{_key(label)}"] = v
            out.update({f"{prefix}/{k}": v for k, v in items.items() if v is not None})
        if r["difference"] is not None:
            out[f"diff/{name}/{frac}"] = r["difference"]
    return out


def _experiment(client, uri: str, source_run_id: str | None) -> tuple[str, str]:
    """The source run's experiment when this store has the run, else the default experiment."""
    from moco_core.config import TrackingConfig

    from .tracking import default_artifact_location

    if source_run_id:
        try:
            exp_id = client.get_run(source_run_id).info.experiment_id
            return exp_id, client.get_experiment(exp_id).name
        except Exception:  # noqa: BLE001 - a package from another store: no run to link to here
            pass
    name = TrackingConfig().experiment
    exp = client.get_experiment_by_name(name)
    return (exp.experiment_id if exp else client.create_experiment(
        name, artifact_location=default_artifact_location(uri))), name


def log_run(uri, ref, meta, task, report, results, feats, seed) -> dict[str, Any]:
    """One MLflow run: params, metrics, ``evaluation.json`` and ``plots/``; returns where it is."""
    import time

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from . import evaluation_plots as plots
    from .registry import TAG_SOURCE_RUN

    client = MlflowClient(uri)
    source = meta.get("source_run_id")
    exp_id, exp_name = _experiment(client, uri, source)
    tags = {"moco.kind": "evaluation", "moco.encoder_ref": ref, "moco.data_fingerprint":
            report["data"]["train_fingerprint"], **({TAG_SOURCE_RUN: source} if source else {})}
    run_name = f"evaluate-{meta.get('name') or meta['arch']}-{datetime.now():%Y%m%d-%H%M%S}"
    run_id = client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
    try:
        s = report["settings"]
        params = {"encoder": ref, "data.root": report["data"]["root"], "data.splits_dir": report["data"]["splits_dir"],
                  "data.label_kind": report["data"]["label_kind"], "protocols": " ".join(s["protocols"]),
                  "label_fractions": " ".join(f"{f:g}" for f in s["label_fractions"]), "baseline": s["baseline"],
                  "seed": seed, "knn_k": s["knn_k"], "knn_t": s["knn_t"], "bootstrap": s["bootstrap"],
                  **{f"linear.{k}": v for k, v in s["linear"].items()},
                  **{f"finetune.{k}": v for k, v in s["finetune"].items()}}
        ts = int(time.time() * 1000)
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                         metrics=[Metric(k, float(v), ts, 0) for k, v in sorted(metric_items(report).items())])
        with tempfile.TemporaryDirectory(prefix="moco-evaluate-") as tmp:
            d = Path(tmp)
            mlflow_info = {"tracking_uri": uri, "run_id": run_id, "experiment_id": exp_id, "experiment_name": exp_name}
            client.log_artifact(run_id, str(write_json(d / JSON_NAME, {**report, "mlflow": mlflow_info})))
            written = [plots.label_fraction_plot(results["encoder"], results.get("random init"),
                                                 d / "label_fraction.png")]
            if task.label_kind == "binary":
                base = {(r.protocol, r.fraction): r for r in results.get("random init", [])}
                for protocol in dict.fromkeys(r.protocol for r in results["encoder"]):
                    r = max((x for x in results["encoder"] if x.protocol == protocol), key=lambda x: x.fraction)
                    written.append(plots.roc_plot(task.targets("test"), r, base.get((r.protocol, r.fraction)),
                                                  task.parts["test"].label_names[0], d / f"roc_{protocol}.png"))
            written.append(plots.retrieval_grid(task, feats, d / "retrieval.png", seed=seed))
            for path in written:
                client.log_artifact(run_id, str(path), "plots")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return mlflow_info


__all__ = ["add_commands", "cmd_evaluate", "evaluate", "format_table", "metric_items", "build_report"]
