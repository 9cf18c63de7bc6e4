"""Box evaluation tasks: ``grounding`` (one box per phrase) and ``detection`` (several boxes per answer).

Boxes follow ``internvl.grounding`` (2D ``[[x1, y1, x2, y2]]`` or 3D ``[[x1, y1, z1, x2, y2, z2]]`` on 0-1000). The
reference (``answer`` field or last ``gpt`` turn) is parsed strictly: a malformed box is a ``MalformedBoxError``
naming the test row's ``file:line``. The prediction is parsed leniently (``grounding.parse_answer``); an answer
with no usable box is *unparsed* (IoU 0, no detections) and counted; malformed candidate boxes are counted too.
IoU is MONAI's (``grounding.box_iou``).

``grounding``: each reference ``<ref>phrase</ref><box>[[...]]</box>`` group has exactly one box. The predicted box
of a phrase is the first box of the predicted group with the same phrase (case-insensitive), else of the predicted
group at the same position. Per row: ``iou``, ``hit50`` (IoU >= 0.5) and ``hit25``, each the mean over the row's
phrases (one phrase per row is the usual case). Aggregates (means over rows): ``mean_iou``, ``acc_iou50``; 3D rows
also ``acc_iou25``; plus ``n_unparsed`` / ``unparsed_rate`` and ``n_malformed_boxes``.

``detection``: all reference boxes of a row against all predicted boxes, class-agnostic (phrases are not compared).
True positives: a one-to-one matching (``scipy.optimize.linear_sum_assignment``) of pairs with IoU >= 0.5.
Aggregates: ``precision50`` / ``recall50`` (micro: summed over rows), and for 2D ``map``, ``map_50``, ``map_75``
from ``torchmetrics.detection.MeanAveragePrecision`` (every predicted box scored 1.0: text answers carry no
confidence); for 3D rows mAP is listed under ``not_computed``.

Plots per dataset: an IoU histogram (grounding) and, for 2D rows whose image is readable, up to six images with
the reference (green) and predicted (red, dashed) boxes drawn on them; for 3D rows, up to six rows of the three
orthogonal slices (axial, coronal, sagittal) through the reference box centre with both boxes drawn in the
0-1000 frame (``grounding_boxes_3d.png`` / ``detection_boxes_3d.png``; ``plots.draw_box_planes``). The 3D frame
is the reader's *preprocessed* grid, which scoring (also without a model, ``--predictions``) cannot rebuild, so
these slices show the boxes on the frame, not the voxels.
"""
from __future__ import annotations

import os

from internvl import grounding
from internvl.evaluation import metrics
from internvl.evaluation.base import EvalTask, register_task

N_OVERLAYS = 6


def _reference(sample: dict) -> list[grounding.Grounding]:
    ref = sample.get("reference")
    if not isinstance(ref, str):
        raise grounding.MalformedBoxError(sample["where"], f"box reference must be text, got {type(ref).__name__}")
    named = grounding.named_box_refs(ref)
    if named:  # placing needs the media reader of the model's tower, which scoring does not have
        raise grounding.MalformedBoxError(sample["where"], f"the reference names row boxes {named} "
                                                           f"(<box>name</box>); a scored reference must hold the "
                                                           f"0-1000 tokens themselves")
    return grounding.parse_grounded(ref, sample["where"])


def _image_path(sample: dict) -> str | None:
    """Resolved path of the row's first ``image`` (for the overlay plot), if it names one."""
    ref = sample.get("image")
    ref = ref[0] if isinstance(ref, (list, tuple)) and ref else ref
    if not isinstance(ref, str):
        return None
    return ref if os.path.isabs(ref) or not sample.get("media_root") else os.path.join(sample["media_root"], ref)


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.strip().lower() == b.strip().lower()


@register_task("grounding")
class GroundingTask(EvalTask):
    name = "grounding"
    summary_keys = ("mean_iou", "acc_iou50", "unparsed_rate")
    row_metrics = {"mean_iou": "iou", "acc_iou50": "hit50", "acc_iou25": "hit25"}

    def score(self, prediction: str, sample: dict) -> dict:
        truth = _reference(sample)
        if not truth or any(len(g.boxes) != 1 for g in truth):
            raise grounding.MalformedBoxError(sample["where"], "a grounding reference has one <box> with exactly one "
                                                               "box per phrase (several boxes: task 'detection')")
        dims = len(truth[0].boxes[0]) // 2
        parsed = grounding.parse_answer(prediction, dims)
        pred_boxes, ious = [], []
        for i, g in enumerate(truth):
            match = next((p for p in parsed.groundings if _same(p.phrase, g.phrase)), None)
            if match is None and i < len(parsed.groundings):
                match = parsed.groundings[i]
            box = match.boxes[0] if match else None
            pred_boxes.append(box)
            ious.append(float(grounding.box_iou([g.boxes[0]], [box])[0, 0]) if box else 0.0)
        return {"dims": dims, "phrases": [g.phrase for g in truth], "true_boxes": [g.boxes[0] for g in truth],
                "pred_boxes": pred_boxes, "ious": ious, "iou": metrics.mean(ious),
                "hit50": metrics.mean(float(v >= 0.5) for v in ious),
                "hit25": metrics.mean(float(v >= 0.25) for v in ious),
                "unparsed": not parsed.boxes, "n_malformed": parsed.n_malformed,
                "image_path": _image_path(sample) if dims == 2 else None}

    def aggregate(self, records: list[dict], out_dir: str) -> dict:
        n = len(records)
        unparsed = sum(bool(r["unparsed"]) for r in records)
        out = {"n": n, "n_phrases": sum(len(r["ious"]) for r in records),
               "mean_iou": metrics.mean(r["iou"] for r in records),
               "acc_iou50": metrics.mean(r["hit50"] for r in records)}
        if any(r["dims"] == 3 for r in records):
            out["acc_iou25"] = metrics.mean(r["hit25"] for r in records)
        out.update({"n_unparsed": unparsed, "unparsed_rate": unparsed / n if n else None,
                    "n_malformed_boxes": sum(r["n_malformed"] for r in records)})
        if n:
            out["plots"] = [_iou_histogram(records, os.path.join(out_dir, "grounding_iou.png"))]
            out["plots"] += _box_plots(records, out_dir, "grounding")
        return out


@register_task("detection")
class DetectionTask(EvalTask):
    name = "detection"
    summary_keys = ("precision50", "recall50", "map", "map_50")

    def score(self, prediction: str, sample: dict) -> dict:
        truth = [b for g in _reference(sample) for b in g.boxes]
        dims = len(truth[0]) // 2 if truth else None
        parsed = grounding.parse_answer(prediction, dims)
        preds = parsed.boxes
        return {"dims": dims or (len(preds[0]) // 2 if preds else 2), "true_boxes": truth, "pred_boxes": preds,
                "tp50": _matches(truth, preds, 0.5), "unparsed": not preds, "n_malformed": parsed.n_malformed,
                "image_path": _image_path(sample)}

    def aggregate(self, records: list[dict], out_dir: str) -> dict:
        n = len(records)
        tp = sum(r["tp50"] for r in records)
        n_pred = sum(len(r["pred_boxes"]) for r in records)
        n_true = sum(len(r["true_boxes"]) for r in records)
        unparsed = sum(bool(r["unparsed"]) for r in records)
        out = {"n": n, "n_true_boxes": n_true, "n_pred_boxes": n_pred,
               "precision50": tp / n_pred if n_pred else None, "recall50": tp / n_true if n_true else None}
        flat = [r for r in records if r["dims"] == 2]
        if flat:
            out.update(mean_average_precision(flat))
        if len(flat) < n:
            out["not_computed"] = {"map": f"{n - len(flat)} 3D rows: torchmetrics' bbox mAP is 2D only; "
                                          "mAP is over the 2D rows" if flat else "3D rows: bbox mAP is 2D only"}
        out.update({"n_unparsed": unparsed, "unparsed_rate": unparsed / n if n else None,
                    "n_malformed_boxes": sum(r["n_malformed"] for r in records)})
        if n:
            out["plots"] = _box_plots(records, out_dir, "detection")
        return out


def _matches(truth, preds, threshold: float) -> int:
    """Largest one-to-one set of (reference, prediction) pairs with IoU >= ``threshold``."""
    if not truth or not preds:
        return 0
    from scipy.optimize import linear_sum_assignment

    ok = grounding.box_iou(truth, preds) >= threshold
    rows, cols = linear_sum_assignment(ok, maximize=True)
    return int(ok[rows, cols].sum())


def mean_average_precision(records: list[dict]) -> dict:
    """``map``, ``map_50``, ``map_75`` of 2D records (class-agnostic, score 1.0) by torchmetrics."""
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    def boxes(b):
        return torch.tensor(b, dtype=torch.float32).reshape(-1, 4)

    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")
    metric.update([{"boxes": boxes(r["pred_boxes"]), "scores": torch.ones(len(r["pred_boxes"])),
                    "labels": torch.zeros(len(r["pred_boxes"]), dtype=torch.long)} for r in records],
                  [{"boxes": boxes(r["true_boxes"]), "labels": torch.zeros(len(r["true_boxes"]), dtype=torch.long)}
                   for r in records])
    result = metric.compute()
    return {k: float(result[k]) for k in ("map", "map_50", "map_75")}


def _iou_histogram(records: list[dict], path: str) -> str:
    from internvl.evaluation.plots import new_figure, save_figure

    values = [v for r in records for v in r["ious"]]
    fig, ax = new_figure(figsize=(4.5, 3))
    ax.hist(values, bins=10, range=(0, 1), color="tab:blue")
    ax.axvline(0.5, color="gray", linestyle="--")
    ax.set_title(f"IoU: mean {metrics.mean(values):.3f} (n={len(values)} phrases)")
    ax.set_xlabel("IoU")
    ax.set_ylabel("phrases")
    return save_figure(fig, path)


def _box_plots(records: list[dict], out_dir: str, task: str) -> list[str]:
    """The box overlay figures of a task that has any: 2D images, 3D slices."""
    paths = [_overlays(records, os.path.join(out_dir, f"{task}_boxes.png")),
             _slices_3d(records, os.path.join(out_dir, f"{task}_boxes_3d.png"))]
    return [p for p in paths if p]


def _slices_3d(records: list[dict], path: str) -> str | None:
    """Up to ``N_OVERLAYS`` 3D rows, each as three orthogonal slices through its (first) reference box centre."""
    from internvl.evaluation.plots import draw_box_planes, new_figure, save_figure

    shown = [r for r in records if r["dims"] == 3 and r["true_boxes"]][:N_OVERLAYS]
    if not shown:
        return None
    fig, axes = new_figure(len(shown), 3, figsize=(9, 3.1 * len(shown)), squeeze=False)
    for row_axes, r in zip(axes, shown):
        draw_box_planes(row_axes, r["true_boxes"], [b for b in r["pred_boxes"] if b])
        score = f"IoU {r['iou']:.2f}" if "iou" in r else f"TP {r['tp50']}/{len(r['true_boxes'])}"
        row_axes[0].annotate(f"{os.path.basename(str(r.get('source')))}:{r.get('line')}  {score}", (0, 1.18),
                             xycoords="axes fraction", fontsize=8)
    fig.suptitle("reference (green) and predicted (red, dashed) 3D boxes; dotted: box misses the slice", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _overlays(records: list[dict], path: str) -> str | None:
    """Up to ``N_OVERLAYS`` 2D images with reference (green) and predicted (red) boxes; None if none readable."""
    from PIL import Image

    from internvl.evaluation.plots import new_figure, save_figure

    shown = []
    for r in records:
        if len(shown) == N_OVERLAYS:
            break
        if r["dims"] != 2 or not r.get("image_path") or not os.path.isfile(r["image_path"]):
            continue
        with Image.open(r["image_path"]) as im:
            shown.append((r, im.convert("RGB")))
    if not shown:
        return None
    fig, axes = new_figure(1, len(shown), figsize=(3 * len(shown), 3.2), squeeze=False)
    for ax, (r, im) in zip(axes[0], shown):
        ax.imshow(im)
        for boxes, color, style in ((r["true_boxes"], "lime", "-"), ([b for b in r["pred_boxes"] if b], "red", "--")):
            for b in boxes:
                x1, y1, x2, y2 = grounding.to_pixels_2d(b, *im.size)
                ax.add_patch(_rect(x1, y1, x2, y2, color, style))
        score = f"IoU {r['iou']:.2f}" if "iou" in r else f"TP {r['tp50']}/{len(r['true_boxes'])}"
        ax.set_title(f"{os.path.basename(str(r.get('source')))}:{r.get('line')}  {score}", fontsize=8)
        ax.axis("off")
    fig.suptitle("reference (green) and predicted (red, dashed) boxes", fontsize=9)
    return save_figure(fig, path)


def _rect(x1, y1, x2, y2, color, style):
    from matplotlib.patches import Rectangle

    return Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5, linestyle=style)
