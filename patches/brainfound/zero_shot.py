"""Zero-shot scan classification with a stage-2 Brainfound model (prompted class texts vs scan embeddings).

    python -m patches.brainfound.zero_shot --model work_dirs/brainfound/stage2 --data test.jsonl \\
        --classes "normal,hemorrhage,infarction,fracture,tumor"

Each class is described by prompt templates (``--templates "a|b|..."`` with ``{}`` for the class name; defaults
below); its text embedding is the normalised mean of the templates' embeddings. A scan's class probabilities
are the softmax of its cosine similarities to the classes over the learned temperature. ``--data`` is scan JSONL
(``datasets.ScanDataset``) whose rows carry ``label`` (one of ``--classes``; any other label is an error naming the
line).

Reported (``metrics.json``, also printed): overall top-1 accuracy; per class the accuracy on that class's scans
(recall) and the one-vs-rest AUROC of its probability; their means over classes (mean AUROC over the classes for
which it is defined: a class with no positive or no negative scan has no AUROC and is listed as such). Also
``predictions.csv`` (per-scan probabilities) and ``roc.png`` (one-vs-rest ROC curves). Single process.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from patches.brainfound.clip_model import BrainfoundCLIP, ClipConfig
from patches.brainfound.datasets import ScanDataset, collate_scans
from internvl.fileio import atomic_write_text

DEFAULT_TEMPLATES = ["{}", "this is a {} scan .", "a brain ct showing {} .", "findings consistent with {} ."]


def load_clip(run_dir: str | os.PathLike) -> tuple[BrainfoundCLIP, object]:
    """The online stage-2 model exported by ``pretrain_clip`` (no momentum encoders, no queues), in eval mode."""
    from safetensors.torch import load_file

    from patches.brainfound.encoder import brainfound_unet
    from patches.brainfound.text import load_text_model

    root = Path(run_dir)
    for need in ("vision_encoder", "text_model", "clip_heads.safetensors", "clip_config.json"):
        if not (root / need).exists():
            raise FileNotFoundError(f"{root}: no {need}; is this a finished pretrain_clip output dir?")
    vision = brainfound_unet(pretrained_path=str(root / "vision_encoder"))
    tok, text = load_text_model(root / "text_model")
    cfg = ClipConfig(**json.loads((root / "clip_config.json").read_text())["clip"])
    model = BrainfoundCLIP(vision, text, cfg, with_momentum=False)
    model.load_head_state(load_file(str(root / "clip_heads.safetensors")), str(root / "clip_heads.safetensors"))
    return model.eval(), tok


@torch.no_grad()
def class_embeddings(model: BrainfoundCLIP, tok, classes: list[str], templates: list[str]) -> torch.Tensor:
    device = next(model.parameters()).device
    rows = []
    for name in classes:
        texts = [t.format(name) for t in templates]
        enc = tok(texts, padding=True, truncation=True, max_length=model.cfg.text_max_length, return_tensors="pt")
        emb = model.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device))
        rows.append(torch.nn.functional.normalize(emb.mean(0), dim=0))
    return torch.stack(rows)


def metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    from sklearn.metrics import roc_auc_score

    pred = probs.argmax(1)
    per = {}
    for k, name in enumerate(classes):
        pos = labels == k
        entry = {"n": int(pos.sum()), "accuracy": float((pred[pos] == k).mean()) if pos.any() else None}
        if pos.any() and (~pos).any():
            entry["auroc"] = float(roc_auc_score(pos.astype(int), probs[:, k]))
        else:
            entry["auroc"] = None
            entry["auroc_undefined"] = "no positive scans" if not pos.any() else "no negative scans"
        per[name] = entry
    accs = [v["accuracy"] for v in per.values() if v["accuracy"] is not None]
    aucs = [v["auroc"] for v in per.values() if v["auroc"] is not None]
    return {"n": int(len(labels)), "accuracy": float((pred == labels).mean()),
            "mean_class_accuracy": float(np.mean(accs)) if accs else None,
            "mean_auroc": float(np.mean(aucs)) if aucs else None, "chance_accuracy": 1.0 / len(classes),
            "per_class": per}


def _roc_plot(probs: np.ndarray, labels: np.ndarray, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for k, name in enumerate(classes):
        pos = labels == k
        if pos.any() and (~pos).any():
            fpr, tpr, _ = roc_curve(pos.astype(int), probs[:, k])
            ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("zero-shot one-vs-rest ROC")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(model: BrainfoundCLIP, tok, data: str, classes: list[str], templates: list[str] | None,
             out_dir: str | os.PathLike, batch_size: int = 4) -> dict:
    templates = list(templates or DEFAULT_TEMPLATES)
    if any("{}" not in t for t in templates):
        raise ValueError(f"every template needs a '{{}}' for the class name: {templates}")
    vc = model.vision.config
    ds = ScanDataset(data, modalities=vc.modalities, default_modality=vc.modality, num_slices=vc.num_slices,
                     image_size=vc.image_size, slice_select=vc.slice_select, ct_window=vc.ct_window,
                     classes=classes, need_text=False)
    device = next(model.parameters()).device
    cls = class_embeddings(model, tok, classes, templates)
    probs, labels = [], []
    for batch in tqdm(DataLoader(ds, batch_size=batch_size, collate_fn=collate_scans), desc="zero-shot"):
        img = model.encode_image(batch["pixel_values"].to(device), batch["modality"].to(device))
        probs.append(torch.softmax(img @ cls.t() / model.temp, dim=-1).float().cpu())
        labels.append(batch["label"])
    p, y = torch.cat(probs).numpy(), torch.cat(labels).numpy()
    result = metrics(p, y, classes)
    result.update({"classes": classes, "templates": templates, "data": str(data)})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["row", "label", "pred", *classes])
    for i, (row, lab) in enumerate(zip(p, y)):
        w.writerow([ds.rows[i]["where"], classes[lab], classes[int(row.argmax())], *[f"{v:.6f}" for v in row]])
    atomic_write_text(buf.getvalue(), out / "predictions.csv")
    _roc_plot(p, y, classes, out / "roc.png")
    result["plots"] = [str(out / "roc.png")]
    atomic_write_text(json.dumps(result, indent=1), out / "metrics.json")
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="Brainfound zero-shot classification (stage-2 model)")
    ap.add_argument("--model", required=True, help="pretrain_clip output dir")
    ap.add_argument("--data", required=True, help="scan JSONL with 'label'")
    ap.add_argument("--classes", default="normal,hemorrhage,infarction,fracture,tumor")
    ap.add_argument("--templates", default=None, help="'|'-separated prompt templates with {} (default: built-in)")
    ap.add_argument("--out", default=None, help="output dir (default <model>/zero_shot)")
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if len(classes) < 2:
        raise ValueError("--classes needs at least two class names")
    model, tok = load_clip(args.model)
    model.to(args.device)
    templates = args.templates.split("|") if args.templates else None
    res = evaluate(model, tok, args.data, classes, templates, args.out or Path(args.model) / "zero_shot",
                   args.batch_size)
    print(json.dumps({k: res[k] for k in ("n", "accuracy", "mean_class_accuracy", "mean_auroc")}))
    for name, v in res["per_class"].items():
        auc = f"{v['auroc']:.3f}" if v["auroc"] is not None else f"n/a ({v['auroc_undefined']})"
        acc = f"{v['accuracy']:.3f}" if v["accuracy"] is not None else "n/a"
        print(f"  {name:<14} n={v['n']:<4} accuracy={acc}  auroc={auc}")
    return res


if __name__ == "__main__":
    from patches.brainfound.brainfound_cli import run_cli

    run_cli(main)
