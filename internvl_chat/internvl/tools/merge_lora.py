"""Fold LoRA adapters (LLM and vision backbone) into plain weights.

    python -m internvl.tools.merge_lora SRC DST

SRC is a checkpoint saved while LoRA was on (its config keeps ``use_llm_lora`` / ``use_backbone_lora``, so
loading re-wraps it); DST holds plain weights in the ordinary layout, ``use_*_lora = 0``, and the tokenizer, and
gives the same logits as the adapted model.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from internvl.errors import run_cli
from internvl.fileio import atomic_directory


def merge(model):
    """Merge and unload every peft wrapper of ``model`` in place; returns the model."""
    if hasattr(model.language_model, "merge_and_unload"):
        model.language_model = model.language_model.merge_and_unload()
    for tower, encoder in model.vision_encoders().items():
        if hasattr(encoder, "merge_and_unload"):
            if tower is None:
                model.vision_model = encoder.merge_and_unload()
            else:
                model.vision_towers[tower].vision_model = encoder.merge_and_unload()
    model.config.use_llm_lora = 0
    model.config.use_backbone_lora = 0
    return model


def run(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Merge LoRA adapters into an InternVL checkpoint")
    parser.add_argument("src")
    parser.add_argument("dst")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    from internvl.model.internvl_chat import InternVLChatModel

    model = InternVLChatModel.from_pretrained(args.src, dtype="auto")
    if not (model.config.use_llm_lora or model.config.use_backbone_lora):
        print(f"merge_lora: {args.src} holds no LoRA adapters; writing it unchanged", file=sys.stderr)
    merge(model)
    with atomic_directory(args.dst) as tmp:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(args.src).save_pretrained(tmp)
    print(f"wrote {Path(args.dst).resolve()}")


def main(argv=None) -> int:
    """The command line under the error policy: one ``error:`` line and exit status 2 for bad input."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
