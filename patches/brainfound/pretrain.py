"""Brainfound's ``pretrain.py`` (stage 2) with its own flags: ``python -m patches.brainfound.pretrain ...``.

    torchrun --nproc_per_node=4 -m patches.brainfound.pretrain --exp_name NAME --epochs 50 --model v5 \
        --sentence_shuffle false --validation true --valid_save_image_freq 100 --tie_text_encoder_decoder false \
        --momentum 0.996 --lr 1e-6 --resume PATH --valid_freq 1 --batch_size 3 --train_print_freq 100
    python -m torch.distributed.launch --nproc_per_node=4 -m patches.brainfound.pretrain ...   # deprecated, works

A thin entry point: the flags become a stage-2 config (``brainfound_cli``) and ``pretrain_clip.main`` runs it
(contrast + captioning, validation, exports). Bad input: ``error: ...`` and exit status 2.
"""
from __future__ import annotations

from patches.brainfound.brainfound_cli import parse, run_cli


def main(argv: list[str] | None = None) -> dict:
    from patches.brainfound import pretrain_clip

    args, cfg = parse(argv, "Brainfound stage 2 (contrast + captioning) with Brainfound's flags")
    return pretrain_clip.main(cfg=cfg, resume=args.resume)


if __name__ == "__main__":
    run_cli(main)
