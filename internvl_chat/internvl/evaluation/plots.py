"""Figure helpers for evaluation tasks: headless (Agg) matplotlib, atomic PNG writes, and the three orthogonal
slices of a 3D box frame (``draw_box_planes``) that the box tasks draw predicted and true 3D boxes on."""
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


# the three orthogonal planes of a 3D 0-1000 box frame: (name, horizontal axis, vertical axis, fixed axis)
PLANES_3D = (("axial (z = {:.0f})", 0, 1, 2), ("coronal (y = {:.0f})", 0, 2, 1), ("sagittal (x = {:.0f})", 1, 2, 0))
_AXIS_NAMES = ("x (W)", "y (H)", "z (D)")


def draw_box_planes(axes, true_boxes, pred_boxes, centre=None) -> None:
    """Three orthogonal slices of a 3D box frame (``internvl.grounding``: x, y, z on 0-1000) through ``centre``
    (default: the first true box's centre), one per axis of ``axes``: each box's cross-section where it crosses
    the slice (true: green, predicted: red dashed), its projection dotted where it does not."""
    from matplotlib.patches import Rectangle

    if centre is None:
        b = true_boxes[0]
        centre = [(b[i] + b[i + 3]) / 2 for i in range(3)]
    for ax, (title, h, v, fixed) in zip(axes, PLANES_3D):
        for boxes, color, style in ((true_boxes, "lime", "-"), (pred_boxes, "red", "--")):
            for b in boxes:
                crosses = b[fixed] <= centre[fixed] <= b[fixed + 3]
                ax.add_patch(Rectangle((b[h], b[v]), b[h + 3] - b[h], b[v + 3] - b[v], fill=False, edgecolor=color,
                                       linewidth=1.5 if crosses else 0.8, linestyle=style if crosses else ":"))
        ax.set_xlim(0, 1000)
        ax.set_ylim(0, 1000)
        ax.set_aspect("equal")
        ax.set_facecolor("0.15")
        ax.set_title(title.format(centre[fixed]), fontsize=8)
        ax.set_xlabel(_AXIS_NAMES[h], fontsize=7)
        ax.set_ylabel(_AXIS_NAMES[v], fontsize=7)
        ax.tick_params(labelsize=6)
