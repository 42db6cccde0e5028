"""The report of an evaluation: the results side by side (encoder, baseline, difference), as a
JSON file and as the table ``moco evaluate`` prints."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from moco_core.errors import UserError

from ..storage import absolute, write_atomic
from .choices import JSON_NAME


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


def build_report(
    ref, meta, task, root, splits_dir, protocols, fractions, baseline, seed, settings, results, fingerprint
) -> dict[str, Any]:
    train = task.parts["train"]
    rows = []
    base = {(r.protocol, r.fraction): r for r in results.get("random init", [])}
    for r in results["encoder"]:
        b = base.get((r.protocol, r.fraction))
        rows.append(
            {
                "protocol": r.protocol,
                "label_fraction": r.fraction,
                "labelled_images": r.n_labelled,
                "metric": r.metric,
                "encoder": _side(r),
                "baseline": _side(b) if b else None,
                "difference": (r.value - b.value) if b else None,
            }
        )
    return _finite(
        {
            "encoder": {
                "ref": ref,
                "name": meta.get("name"),
                "arch": meta["arch"],
                "in_channels": meta["in_channels"],
                "image_size": meta["image_size"],
                "small_image_stem": meta["small_image_stem"],
                "source_run_id": meta.get("source_run_id"),
                "data_fingerprint": meta.get("data_fingerprint"),
            },
            "data": {
                "root": absolute(root),
                "splits_dir": str(Path(splits_dir).expanduser().resolve()) if splits_dir else None,
                "label_kind": train.label_kind,
                "label_names": train.label_names,
                "classes": train.classes,
                "images": {k: len(p) for k, p in task.parts.items()},
                "train_fingerprint": fingerprint,
                "pretraining_data": fingerprint == meta.get("data_fingerprint"),
            },
            "settings": {
                "protocols": list(protocols),
                "label_fractions": list(fractions),
                "baseline": baseline,
                "seed": seed,
                "knn_k": settings.knn_k,
                "knn_t": settings.knn_t,
                "bootstrap": settings.bootstrap,
                "linear": asdict(settings.linear),
                "finetune": asdict(settings.finetune),
            },
            "results": rows,
            "mlflow": None,
        }
    )


REPORT_KEYS = ("encoder", "data", "settings", "results")  # what tells a report of ours from any JSON


def check_out(path: Path) -> None:
    """Before any work: ``path`` can take the JSON report. A folder, a file in the way of its folder, or
    a file that is not an earlier report (which a new evaluation replaces) is refused."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(
            f"--out {path} is a folder; --out names the JSON file to write, e.g. --out {path / JSON_NAME}"
        )
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UserError(f"--out {path}: {blocking} is a file, not a folder; choose another --out")
    if path.is_file() and path.stat().st_size > 0 and not _is_report(path):
        raise UserError(
            f"--out {path} exists and is not a report of moco evaluate; refusing to overwrite it: "
            "choose another --out (an earlier report is replaced)"
        )


def _is_report(path: Path) -> bool:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and all(k in report for k in REPORT_KEYS)


def write_json(path: Path, report: dict[str, Any]) -> Path:
    """``report`` as JSON (no NaN: undefined values are null), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))
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
        f"data     {d['root']}: {d['label_kind']} ({what}); train {n['train']}, "
        f"val {n['val']}, test {n['test']}"
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
        line = (
            f"{r['protocol']:<9} {r['label_fraction']:>8g} {r['labelled_images']:>7}  "
            f"{_num(enc['value'], enc['ci95']):<26}"
        )
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
                lines.append(
                    f"  {r['protocol']} {r['label_fraction']:g} per label: "
                    + ", ".join(f"{k} {_num(v)}" for k, v in per.items())
                )
    return "\n".join(lines)


__all__ = ["build_report", "write_json", "format_table"]
