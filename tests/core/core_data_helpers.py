"""Helpers for the core data-pipeline tests: small JSONL/meta/image writers, in-test BPE tokenizers for
templates the tiny model's tokenizer lacks, and one row per kind of bad sample."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

INTERNVL_SPECIALS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
CORPUS = ["What is shown in the image? A cat sits on a mat.", "Describe the lesion. It is a round nodule.",
          "Please provide the bounding box coordinate of the region this sentence describes:",
          "Yes. No. The answer is 42. [[10, 20, 300, 400]]", "user assistant system"] * 20


def make_bpe_tokenizer(specials: list[str], *, bos: str | None = None, merge_whitespace: bool = False,
                       pad: str | None = None, corpus: list[str] | None = None):
    """A small byte-level BPE tokenizer with ``specials``.

    ``bos``: the tokenizer prepends this special (InternLM2/Llama-like). ``merge_whitespace``: no regex
    pre-splitting, so BPE merges across newlines ("\\n\\n" becomes one token) like sentencepiece-style tokenizers.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not merge_whitespace)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = corpus or CORPUS
    if merge_whitespace:
        text = text + ["\n\nsome text\n\nmore"] * 50
    tk.train_from_iterator(text, trainer=trainer)
    if bos:
        tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                          special_tokens=[(bos, tk.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=pad or specials[0], bos_token=bos,
                                   additional_special_tokens=[s for s in specials if s != bos])


def write_image(path: Path, size=(120, 90), color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows are dicts (dumped) or raw strings (written verbatim: malformed or blank lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def write_meta(path: Path, entries: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def qa(question: str, answer: str = "A cat.", **extra) -> dict:
    return {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}], **extra}


def bad_rows(tmp_path: Path) -> list:
    """(row, reason) for each kind of bad sample; the images they need are written under tmp_path/img."""
    write_image(tmp_path / "img" / "ok.png", (300, 100))
    (tmp_path / "img" / "broken.png").write_bytes(b"\x89PNG truncated")
    return [
        ('{"conversations": [', "malformed_json"),
        ('["a list"]', "bad_row"),
        (qa("<image>\nQ", image="missing.png"), "missing_file"),
        (qa("<image>\nQ", image="broken.png"), "unreadable_media"),
        (qa("<image> and <image>", image="ok.png"), "placeholder_mismatch"),
        (qa("<image>\nQ", image=["ok.png", "ok.png", "ok.png"]), "placeholder_mismatch"),
        (qa("word " * 400 + "<image>", image="ok.png"), "too_long"),
        (qa("<image>\nQ " + "word " * 400, image="ok.png"), "no_trained_tokens"),
        (qa("Q", video="clip.mp4"), "bad_row"),
        ({"image": "ok.png"}, "bad_row"),
    ]
