"""Report-generation metrics and the stage-2 validation pass (generated reports vs the scans' own reports).

Metrics (``report_metrics``), on lower-cased word / punctuation tokens:

* ``bleu4`` (corpus BLEU-4) and ``bleu4_sentence`` (mean sentence BLEU-4): the core evaluator's
  ``internvl.evaluation.metrics.corpus_bleu4`` / ``sentence_bleu4`` (nltk, smoothing method 1);
* ``rouge_l``: the core's ``rouge_l`` (``rouge_score`` ROUGE-L F, stemmed), mean over reports;
* ``meteor``: nltk's ``meteor_score``, mean over reports. The core has no METEOR, so it is computed here. nltk's
  METEOR matches exact words, then Porter stems, then WordNet synonyms; the WordNet corpus is a separate download
  that this project never fetches at run time, so the synonym stage is switched off (``_NoSynonyms``) everywhere,
  on every machine: scores are METEOR with exact + stem matching (slightly below full METEOR when synonyms would
  have matched).

    python -m patches.brainfound.report_eval --model work_dirs/brainfound/stage2 --data scans.jsonl \
        [--beam_size 3] [--decode_max_length 40] [--out DIR]

(the command line: a finished stage-2 run's reports for a scan JSONL with reference reports; default output
``<model>/reports``).

``validate`` decodes every scan of a scan JSONL with the stage-2 model (beam search) and writes, atomically, into
its output folder: ``reports.jsonl`` (row, reference, generated), ``metrics.json`` and, for every
``save_image_freq``-th scan, ``scan_<i>.png`` (a few slices, the generated and the reference report).
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from internvl.evaluation import metrics as core_metrics
from internvl.fileio import atomic_write_text


class _NoSynonyms:
    """Stands in for nltk's WordNet reader: no synonyms (see the module docstring)."""

    @staticmethod
    def synsets(*_args, **_kwargs) -> list:
        return []


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem.porter import PorterStemmer

    return PorterStemmer()


def meteor(prediction: str, references: str | Sequence[str]) -> float:
    from nltk.translate.meteor_score import meteor_score

    refs = [references] if isinstance(references, str) else list(references)
    hyp = core_metrics.bleu_tokens(prediction)
    ref_tokens = [core_metrics.bleu_tokens(r) for r in refs]
    if not hyp or not any(ref_tokens):
        return 0.0
    return float(meteor_score(ref_tokens, hyp, stemmer=_stemmer(), wordnet=_NoSynonyms()))


def report_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} generated reports but {len(references)} references")
    if not predictions:
        return {"n": 0}
    return {"n": len(predictions),
            "bleu4": core_metrics.corpus_bleu4(list(predictions), list(references)),
            "bleu4_sentence": core_metrics.mean(core_metrics.sentence_bleu4(p, r)
                                                for p, r in zip(predictions, references)),
            "rouge_l": core_metrics.mean(core_metrics.rouge_l(p, r) for p, r in zip(predictions, references)),
            "meteor": core_metrics.mean(meteor(p, r) for p, r in zip(predictions, references))}


def _scan_png(pixel_values: torch.Tensor, generated: str, reference: str, path: Path) -> None:
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = pixel_values.shape[0]
    picks = sorted({round(i * (s - 1) / 3) for i in range(4)})
    fig, axes = plt.subplots(1, len(picks), figsize=(2.2 * len(picks), 3.2), squeeze=False)
    for ax, z in zip(axes[0], picks):
        ax.imshow(((pixel_values[z, 0].float() + 1) / 2).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"slice {z}", fontsize=8)
        ax.axis("off")
    fig.suptitle(textwrap.fill(f"generated: {generated}", 90) + "\n" + textwrap.fill(f"reference: {reference}", 90),
                 fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


@torch.no_grad()
def validate(model, tok, dataset, out_dir: str | os.PathLike, *, beam_size: int | None = None,
             max_length: int | None = None, batch_size: int = 4, save_image_freq: int = 0) -> dict:
    """Generate a report for every scan of ``dataset`` (a ``ScanDataset``), score them, write the outputs."""
    from patches.brainfound.datasets import collate_scans

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generated, references, lines = [], [], []
    try:
        for batch in tqdm(DataLoader(dataset, batch_size=batch_size, collate_fn=collate_scans), desc="reports",
                          leave=False):
            texts = model.generate_reports(batch["pixel_values"].to(device), batch["modality"].to(device), tok,
                                           beam_size=beam_size, max_length=max_length)
            for j, text in enumerate(texts):
                i = len(generated)
                generated.append(text)
                references.append(batch["reference"][j])
                lines.append(json.dumps({"row": dataset.rows[i]["where"], "reference": batch["reference"][j],
                                         "generated": text}, ensure_ascii=False))
                if save_image_freq and i % int(save_image_freq) == 0:
                    _scan_png(batch["pixel_values"][j], text, batch["reference"][j], out / f"scan_{i:04d}.png")
    finally:
        model.train(was_training)
    result = report_metrics(generated, references)
    result["settings"] = {"beam_size": int(beam_size or model.cfg.beam_size),
                          "decode_max_length": int(max_length or model.cfg.decode_max_length),
                          "meteor": "nltk, exact + stem matching (no WordNet synonyms)"}
    atomic_write_text("\n".join(lines) + "\n", out / "reports.jsonl")
    atomic_write_text(json.dumps(result, indent=1) + "\n", out / "metrics.json")
    return result


def main(argv: list[str] | None = None) -> dict:
    import argparse

    from patches.brainfound.datasets import ScanDataset
    from patches.brainfound.zero_shot import load_clip

    ap = argparse.ArgumentParser(description="Brainfound stage-2 report generation (beam search) and scores")
    ap.add_argument("--model", required=True, help="a finished stage-2 output dir")
    ap.add_argument("--data", required=True, help="scan JSONL with reference reports")
    ap.add_argument("--out", default=None, help="output dir (default <model>/reports)")
    ap.add_argument("--beam_size", type=int, default=None, help="default: the run's clip.beam_size")
    ap.add_argument("--decode_max_length", type=int, default=None, help="default: the run's clip.decode_max_length")
    ap.add_argument("--batch_size", type=int, default=4)
    ap.add_argument("--save_image_freq", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    model, tok = load_clip(args.model)
    model.to(args.device)
    vc = model.vision.config
    ds = ScanDataset(str(Path(args.data).resolve()), modalities=vc.modalities, default_modality=vc.modality,
                     num_slices=vc.num_slices, image_size=vc.image_size, slice_select=vc.slice_select,
                     ct_window=vc.ct_window)
    res = validate(model, tok, ds, args.out or Path(args.model) / "reports", beam_size=args.beam_size,
                   max_length=args.decode_max_length, batch_size=args.batch_size,
                   save_image_freq=args.save_image_freq)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    from patches.brainfound.brainfound_cli import run_cli

    run_cli(main)
