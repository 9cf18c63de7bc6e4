"""Brainfound plugin: diffusion-UNet vision encoder (``brainfound_unet``), the ``meditk`` media kind, and the
three Brainfound stages (DDPM pretraining + generation, contrastive vision-language pretraining + zero-shot
classification, InternVL instruction tuning through the core finetune entry point).

Importing the package registers the encoder and the media reader; the stage CLIs are ``python -m
patches.brainfound.{pretrain_ddpm,generate,pretrain_clip,zero_shot,demo}``.
"""
from patches.brainfound import encoder  # noqa: F401  (registers brainfound_unet)
from patches.brainfound import reader  # noqa: F401  (registers the meditk media kind)
from patches.brainfound import tasks  # noqa: F401  (registers the brainfound_mcq eval task)
