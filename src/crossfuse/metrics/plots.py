"""Plots people would rather look at than read: training curves, confusion matrices, reliability."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: List[Dict[str, float]], path: str | Path, metric: str) -> None:
    """Loss (train and val) and the monitored validation metric per epoch."""
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    if any("val_loss" in h for h in history):
        ax1.plot(epochs, [h.get("val_loss", np.nan) for h in history], marker="o", label="val")
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax1.legend()
    ax2.plot(epochs, [h.get(f"val_{metric}", np.nan) for h in history], marker="o", color="tab:green")
    ax2.set(xlabel="epoch", ylabel=metric, title=f"Validation {metric}")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion_matrix(cm: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path,
                          title: str = "Confusion matrix") -> None:
    """Row-normalised colours with the raw counts written in each cell."""
    plt = _plt()
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(labels)
    size = max(4.0, 0.5 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), [str(l) for l in labels], rotation=45, ha="right")
    ax.set_yticks(range(n), [str(l) for l in labels])
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_robustness(curves: Dict[str, List[tuple]], baseline: float, path: str | Path, metric: str,
                    removed: Dict[str, float]) -> None:
    """One line per modality corruption: the metric from clean data through rising strength to the
    modality removed altogether."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, points in curves.items():
        modality = label.split(":")[0]
        xs = list(range(len(points) + 2))
        ys = [baseline] + [v for _, v in points] + [removed.get(modality, np.nan)]
        ax.plot(xs, ys, marker="o", label=f"{label} ({', '.join(str(s) for s, _ in points)})")
    ax.axhline(baseline, color="grey", ls="--", lw=1)
    ax.set(xlabel="corruption strength (0 = clean, last = modality removed)", ylabel=metric,
           title=f"Robustness: {metric} as each modality degrades")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(table: Sequence[Dict], path: str | Path, ece: float, title: str = "Reliability") -> None:
    """Accuracy against confidence per confidence bin (bar width = bin, darker = more items); the
    diagonal is perfect calibration."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    total = max(1, sum(r["n"] for r in table))
    for r in table:
        ax.bar(r["low"], r["accuracy"], width=r["high"] - r["low"], align="edge", color="tab:blue",
               alpha=0.25 + 0.75 * r["n"] / total, edgecolor="tab:blue")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfectly calibrated")
    ax.plot([r["confidence"] for r in table], [r["accuracy"] for r in table], marker="o", color="tab:red",
            label="mean confidence per bin")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy",
           title=f"{title} (ECE {ece:.3f})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _open_rgb(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def _draw_item(ax, item: Dict, caption: str = "", good: Optional[bool] = None,
               open_image: Optional[Callable] = None) -> None:
    """One cell of a results grid, drawn as its modality kind says (``tile``): an image thumbnail,
    a file's name, or wrapped text."""
    import textwrap

    kind, value = item["kind"], item["value"]
    tile = item.get("tile") or ("image" if kind == "image" else "text")
    ax.set_xticks([])
    ax.set_yticks([])
    if tile == "image":
        try:
            im = (open_image or _open_rgb)(value)
            im.thumbnail((256, 256))
            ax.imshow(np.asarray(im))
        except (OSError, ValueError):
            ax.text(0.5, 0.5, "(unreadable)", ha="center", va="center", fontsize=8)
    else:
        text = f"[{kind}] {Path(str(value)).name}" if tile == "file" else str(value)
        ax.text(0.5, 0.5, "\n".join(textwrap.wrap(text, 22)[:6]), ha="center", va="center", fontsize=8,
                transform=ax.transAxes)
    ax.set_xlabel(caption, fontsize=7)
    if good is not None:
        for spine in ax.spines.values():
            spine.set_edgecolor("tab:green" if good else "tab:red")
            spine.set_linewidth(3)


def plot_search_results(queries: Sequence[Dict], path: str | Path, title: str = "",
                        open_image: Optional[Callable] = None) -> None:
    """A grid: one row per query (first column) followed by its top results, best first.

    Each query is ``{"kind", "tile"?, "value", "results": [{"kind", "tile"?, "value", "score",
    "relevant"?}, ...]}`` (tile: image, file or text, as the modality kind's processor says);
    results marked relevant get a green frame, others red (no frame when unknown). ``open_image``
    turns an image path into an RGB PIL image (default: PIL's own conversion); pass the image
    processor's reader to show images as the model saw them.
    """
    plt = _plt()
    cols = 1 + max((len(q["results"]) for q in queries), default=0)
    fig, axes = plt.subplots(len(queries), cols, figsize=(1.9 * cols, 2.1 * len(queries)), squeeze=False)
    for r, q in enumerate(queries):
        _draw_item(axes[r][0], q, "query", open_image=open_image)
        axes[r][0].set_facecolor("#eef3fb")
        for c in range(1, cols):
            ax = axes[r][c]
            if c - 1 < len(q["results"]):
                hit = q["results"][c - 1]
                _draw_item(ax, hit, f"#{c}  {hit['score']:.3f}", hit.get("relevant"), open_image)
            else:
                ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
