"""``exp_root/plots/metrics.png``: the epoch curves of a training run, redrawn from ``csv/metrics.csv`` after each
epoch (losses on the left, validation metrics such as ``val/auc_epoch`` on the right)."""
from __future__ import annotations

import csv
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_metrics(root: str) -> str:
    series: dict[str, dict[int, float]] = {}
    with open(os.path.join(root, "csv", "metrics.csv"), newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["metric"].endswith("_epoch"):
                series.setdefault(r["metric"], {})[int(r["epoch"]) + 1] = float(r["value"])  # last row per epoch
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, pts in sorted(series.items()):
        ax = left if "loss" in name else right
        ax.plot(list(pts), list(pts.values()), marker=".", label=name)
    for ax, title in ((left, "loss"), (right, "validation metrics")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = os.path.join(root, "plots", "metrics.png")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out
