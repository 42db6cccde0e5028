"""The plots of ``moco evaluate``: label efficiency, ROC curves, nearest-neighbour retrieval."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from moco_core.data import load_image
from moco_core.eval import ProtocolResult, Task, nearest_neighbours, roc_curve

from ..plots import pyplot, save

METRIC_LABELS = {"top1": "top-1 accuracy", "auroc": "mean AUROC"}


def label_fraction_plot(
    encoder: Sequence[ProtocolResult], baseline: Sequence[ProtocolResult] | None, path: Path
) -> Path:
    """Test metric against label fraction (log scale), one line per protocol; solid for the encoder,
    dashed for the baseline; bars are the bootstrap 95% intervals."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colours = {}
    for results, style, who in ((encoder, "-", "encoder"), (baseline or [], "--", "random init")):
        for protocol in dict.fromkeys(r.protocol for r in results):
            rows = sorted((r for r in results if r.protocol == protocol), key=lambda r: r.fraction)
            x = [r.fraction for r in rows]
            y = np.array([r.value for r in rows])
            err = np.array([[r.value - r.ci[0], r.ci[1] - r.value] for r in rows]).T
            kw = {"color": colours[protocol]} if protocol in colours else {}
            line = ax.errorbar(
                x,
                y,
                yerr=None if np.isnan(err).any() else err,
                fmt=style,
                marker="o",
                capsize=3,
                label=f"{protocol} ({who})",
                **kw,
            )
            colours.setdefault(protocol, line.lines[0].get_color())
    metric = encoder[0].metric if encoder else "top1"
    ax.set_xscale("log")
    ax.set_xlabel("label fraction (of the train partition)")
    ax.set_ylabel(f"test {METRIC_LABELS[metric]}")
    ax.set_title("label efficiency")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save(fig, path)


def roc_plot(
    labels: np.ndarray, encoder: ProtocolResult, baseline: ProtocolResult | None, label_name: str, path: Path
) -> Path:
    """ROC curves on test of one binary task: the encoder and (dashed) the baseline."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    for r, style, who in ((encoder, "-", "encoder"), (baseline, "--", "random init")):
        if r is None:
            continue
        fpr, tpr = roc_curve(r.test_scores[:, 0], labels.reshape(-1))
        ax.plot(fpr, tpr, style, label=f"{who}: AUROC {r.value:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"{label_name}: {encoder.protocol}, label fraction {encoder.fraction:g}")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_aspect("equal")
    return save(fig, path)


def _label_text(task: Task, name: str, i: int) -> str:
    p = task.parts[name]
    t = p.targets
    if p.label_kind == "multiclass":
        return str(p.classes[int(t[i])])
    on = [n for n, v in zip(p.label_names, t[i]) if v == 1]
    return ",".join(on) if on else "-"


def _same_label(task: Task, i_test: int, i_train: int) -> bool:
    a, b = task.parts["test"].targets[i_test], task.parts["train"].targets[i_train]
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def retrieval_grid(
    task: Task,
    feats: dict[str, dict[str, torch.Tensor]],
    path: Path,
    n_queries: int = 8,
    k: int = 5,
    seed: int = 0,
) -> Path:
    """Test images (first column) and their k nearest train images by cosine similarity of the
    features of each encoder in ``feats`` (``{"encoder": {...}, "random init": {...}}``); a green frame
    marks a neighbour with the query's label, a red one another label."""
    plt = pyplot()
    test, train = task.parts["test"], task.parts["train"]
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(len(test), size=min(n_queries, len(test)), replace=False))
    neighbours = {
        who: nearest_neighbours(f["test"][torch.as_tensor(queries)], f["train"], k)[1].numpy()
        for who, f in feats.items()
    }
    cols = 1 + sum(n.shape[1] for n in neighbours.values())
    fig, axes = plt.subplots(len(queries), cols, figsize=(1.1 * cols, 1.25 * len(queries)), squeeze=False)
    channels = task.data.channels

    def show(ax, path, title, frame=None):
        img = load_image(path, channels).permute(1, 2, 0).numpy()  # H x W x C
        ax.imshow(img[..., 0] if channels == 1 else img, cmap="gray" if channels == 1 else None)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=7)
        for spine in ax.spines.values():
            spine.set_edgecolor(frame or "black")
            spine.set_linewidth(2.5 if frame else 0.5)

    for row, q in enumerate(queries):
        show(axes[row][0], test.paths[q], f"query: {_label_text(task, 'test', q)}")
        col = 1
        for who, nn_idx in neighbours.items():
            for j, i in enumerate(nn_idx[row]):
                frame = "green" if _same_label(task, q, i) else "red"
                title = f"{who}\n{_label_text(task, 'train', i)}" if j == 0 else _label_text(task, "train", i)
                show(axes[row][col], train.paths[i], title, frame)
                col += 1
    fig.suptitle("nearest train images of test queries (cosine similarity of features)", fontsize=9)
    return save(fig, path, dpi=90)


def evaluation_plots(
    task: Task,
    results: dict[str, list[ProtocolResult]],
    feats: dict[str, dict[str, torch.Tensor]],
    seed: int,
    out_dir: Path,
) -> list[Path]:
    """Every plot of an evaluation into ``out_dir``: label efficiency, a ROC curve per protocol (binary
    tasks, at the largest fraction) and the retrieval grid."""
    encoder, baseline = results["encoder"], results.get("random init")
    written = [label_fraction_plot(encoder, baseline, out_dir / "label_fraction.png")]
    if task.label_kind == "binary":
        base = {(r.protocol, r.fraction): r for r in baseline or []}
        for protocol in dict.fromkeys(r.protocol for r in encoder):
            r = max((x for x in encoder if x.protocol == protocol), key=lambda x: x.fraction)
            written.append(
                roc_plot(
                    task.targets("test"),
                    r,
                    base.get((r.protocol, r.fraction)),
                    task.parts["test"].label_names[0],
                    out_dir / f"roc_{protocol}.png",
                )
            )
    written.append(retrieval_grid(task, feats, out_dir / "retrieval.png", seed=seed))
    return written


__all__ = ["label_fraction_plot", "roc_plot", "retrieval_grid", "evaluation_plots"]
