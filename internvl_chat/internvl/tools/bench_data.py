"""The data of ``bench_train``: a seeded, length-skewed training set and the padding arithmetic of its batches.

Medical instruction data mixes one-word answers about an image with long text-only reports; padded batches of
such rows are mostly padding. ``write_skewed_dataset`` writes that mix: half the rows one image with a short
question and a one- or two-word answer, half text-only "write the report" turns with a long answer (a few
hundred words), in a seeded random order. Images are ``image_size`` x ``image_size`` (one tile of the model's
size), so dynamic tiling gives exactly one item per image row whatever ``max_dynamic_patch`` is: every way of
training sees the same vision items. The rows go into ``train.jsonl`` with an InternVL meta JSON ``meta.json``.

``BatchStats`` / ``padded_batches`` count real tokens and padding of right-padded batches of known sample
lengths: ``padding_share = pad slots / all slots``, where a batch of lengths ``l_i`` takes
``len(batch) * max(l_i)`` slots. The benchmark uses it for the unpacked ways and checks it against the real
tokens the Trainer counted.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

# words of the tiny tokenizer's corpus (pretrained/tiny_corpus.txt), so reports tokenise into ordinary pieces
REPORT_WORDS = ("the", "lesion", "is", "in", "left", "right", "hemisphere", "no", "acute", "intracranial",
                "hemorrhage", "infarction", "tumour", "grade", "well", "moderately", "poorly", "differentiated",
                "nuclear", "pleomorphism", "mitotic", "count", "gland", "formation", "necrosis", "invasion",
                "margin", "lymph", "node", "stroma", "normal", "fracture", "atrophy", "edema", "midline", "shift",
                "ventricles", "white", "matter", "axial", "slice", "brain", "scan", "tissue", "with", "and", "of",
                "a", "findings", "impression", "volume", "contrast", "enhanced", "MRI", "CT", "patient")
SHORT_ANSWERS = ("Yes.", "No.", "Normal.", "Hemorrhage.", "Left hemisphere.", "Grade 2.", "Tumour.", "Edema.")
QUESTIONS = ("Is there a lesion in this image?", "Which hemisphere holds the lesion?", "What is shown?",
             "Is the scan normal?", "Which grade is the tumour?")
REPORT_PROMPTS = ("Write the radiology report for this patient.", "Write a pathology report for this case.",
                  "Summarise the findings of the scan in a report.")
COLOURS = ((220, 30, 30), (30, 160, 40), (30, 60, 220), (230, 200, 20), (150, 40, 170), (240, 140, 20))


def _image(path: Path, size: int, rng: random.Random) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), COLOURS[rng.randrange(len(COLOURS))])
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = rng.randrange(size // 2), rng.randrange(size // 2)
        draw.rectangle([x0, y0, x0 + size // 3, y0 + size // 3], fill=COLOURS[rng.randrange(len(COLOURS))])
    img.save(path)


def _report(rng: random.Random, words: int) -> str:
    sentences, left = [], words
    while left > 0:
        n = min(left, rng.randint(6, 14))
        sentence = " ".join(rng.choice(REPORT_WORDS) for _ in range(n))
        sentences.append(sentence[0].upper() + sentence[1:] + ".")
        left -= n
    return " ".join(sentences)


def write_skewed_dataset(out: Path, *, rows: int, image_size: int, seed: int = 0,
                         report_words: tuple[int, int] = (120, 260)) -> Path:
    """Write ``rows`` rows (half image + short answer, half text-only report, seeded order) into ``out``;
    return the meta JSON's path. Deterministic for a given ``(rows, image_size, seed, report_words)``."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    kinds = ["image"] * (rows // 2) + ["report"] * (rows - rows // 2)
    rng.shuffle(kinds)
    lines = []
    for i, kind in enumerate(kinds):
        if kind == "image":
            name = f"images/{i:05d}.png"
            _image(out / name, image_size, rng)
            row = {"id": f"img_{i}", "image": name, "conversations": [
                {"from": "human", "value": "<image>\n" + rng.choice(QUESTIONS)},
                {"from": "gpt", "value": rng.choice(SHORT_ANSWERS)}]}
        else:
            row = {"id": f"report_{i}", "conversations": [
                {"from": "human", "value": rng.choice(REPORT_PROMPTS)},
                {"from": "gpt", "value": _report(rng, rng.randint(*report_words))}]}
        lines.append(json.dumps(row))
    (out / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    meta = {"bench_skewed": {"root": str(out.resolve()), "annotation": str((out / "train.jsonl").resolve()),
                             "data_augment": False, "repeat_time": 1, "length": rows}}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out / "meta.json"


@dataclass
class BatchStats:
    """Token slots of one or more right-padded batches."""

    real_tokens: int = 0
    slots: int = 0
    samples: int = 0

    @classmethod
    def of_batch(cls, lengths: list[int]) -> "BatchStats":
        if not lengths or min(lengths) <= 0:
            raise ValueError(f"a batch needs positive sample lengths, got {lengths}")
        return cls(real_tokens=sum(lengths), slots=len(lengths) * max(lengths), samples=len(lengths))

    def __add__(self, other: "BatchStats") -> "BatchStats":
        return BatchStats(self.real_tokens + other.real_tokens, self.slots + other.slots,
                          self.samples + other.samples)

    @property
    def padding_share(self) -> float:
        return (self.slots - self.real_tokens) / self.slots if self.slots else 0.0


def padded_batches(lengths: list[int], batch_size: int, steps: int | None = None) -> list[BatchStats]:
    """Per step, the stats of batches of ``batch_size`` consecutive samples (a short last batch kept), as a
    sequential sampler without ``drop_last`` draws them; at most ``steps`` batches."""
    batches = [BatchStats.of_batch(lengths[i:i + batch_size]) for i in range(0, len(lengths), batch_size)]
    return batches[:steps] if steps is not None else batches


def total(stats: list[BatchStats]) -> BatchStats:
    out = BatchStats()
    for s in stats:
        out = out + s
    return out


__all__ = ["BatchStats", "padded_batches", "total", "write_skewed_dataset"]
