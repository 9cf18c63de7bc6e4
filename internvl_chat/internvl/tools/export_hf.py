"""Export an InternVL checkpoint (original layout or ours) as a transformers-native ``-hf`` checkpoint.

    python -m internvl.tools.export_hf SRC DST

DST loads with plain ``transformers.InternVLForConditionalGeneration.from_pretrained(DST)`` (no remote code) and
gives the same logits. Only the architecture transformers has can be exported: an ``intern_vit`` vision side,
the ``mlp1`` projector with pixel shuffle v2, and no un-merged LoRA (run ``merge_lora`` first). The top-level
``tie_word_embeddings`` is written explicitly (transformers defaults it to True, which would tie InternVL's
untied head to the embeddings). The tokenizer is copied; ``image_token_id`` is its ``<IMG_CONTEXT>`` id.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from internvl.errors import run_cli
from internvl.fileio import atomic_directory


def to_hf(model, tokenizer):
    """An ``InternVLForConditionalGeneration`` holding ``model``'s weights."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    from internvl.model.checkpoint import CheckpointError, ours_state_to_hf

    cfg = model.config
    if cfg.vision_towers:
        raise CheckpointError(f"transformers' InternVL has one vision tower; this model has more "
                              f"({sorted(cfg.vision_towers)}): it stays in our layout")
    if cfg.vision_config.encoder_name != "intern_vit" or cfg.projector != "mlp1":
        raise CheckpointError(f"only intern_vit + mlp1 models exist in transformers; this one has "
                              f"{cfg.vision_config.encoder_name!r} + {cfg.projector!r}")
    if cfg.ps_version != "v2":
        raise CheckpointError("transformers' InternVL uses pixel shuffle v2; this checkpoint uses "
                              f"{cfg.ps_version!r} and would not give the same logits")
    if cfg.use_llm_lora or cfg.use_backbone_lora:
        raise CheckpointError("the checkpoint still holds LoRA adapters: run python -m internvl.tools.merge_lora first")
    if cfg.vision_config.drop_path_rate:
        cfg.vision_config.drop_path_rate = 0.0  # stochastic depth is training-only; transformers has none
    image_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    llm = model.language_model
    tied = llm.get_output_embeddings().weight.data_ptr() == llm.get_input_embeddings().weight.data_ptr()
    text_config = cfg.llm_config.to_dict()
    text_config["tie_word_embeddings"] = tied
    hf_config = InternVLConfig(vision_config=cfg.vision_config.to_hf().to_dict(), text_config=text_config,
                               image_token_id=image_token_id, image_seq_length=cfg.num_image_token,
                               downsample_ratio=cfg.downsample_ratio, projector_hidden_act="gelu",
                               vision_feature_layer=cfg.select_layer, vision_feature_select_strategy="default",
                               tie_word_embeddings=tied)
    hf = InternVLForConditionalGeneration(hf_config)
    state = ours_state_to_hf(model.state_dict())
    if tied:
        state.pop("lm_head.weight", None)
    result = hf.load_state_dict(state, strict=not tied)
    if tied and (result.missing_keys != ["lm_head.weight"] or result.unexpected_keys):
        raise CheckpointError(f"weights do not map onto transformers' InternVL: {result}")
    return hf.to(next(model.parameters()).dtype).eval()


def export(src: str, dst: str) -> Path:
    from transformers import AutoTokenizer

    from internvl.model.internvl_chat import InternVLChatModel

    model = InternVLChatModel.from_pretrained(src, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(src)
    hf = to_hf(model, tokenizer)
    with atomic_directory(dst) as tmp:
        hf.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(dst).resolve()


def run(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Export an InternVL checkpoint as a transformers-native -hf one")
    parser.add_argument("src")
    parser.add_argument("dst")
    args = parser.parse_args(argv)
    print(f"wrote {export(args.src, args.dst)}")


def main(argv=None) -> int:
    """The command line under the error policy: one ``error:`` line and exit status 2 for bad input."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
