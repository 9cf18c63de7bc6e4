"""Figure helpers for evaluation tasks: headless (Agg) matplotlib and atomic PNG writes."""
from __future__ import annotations

import os
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend chosen first)


def new_figure(*args, **kwargs):
    """``plt.subplots`` on the Agg backend."""
    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: str) -> str:
    """Write ``fig`` to ``path`` (PNG) through a temporary file in the same folder, then close it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
