"""Brainfound plugin: diffusion-UNet vision encoder (``brainfound_unet``), the ``meditk`` media kind, and the
three Brainfound stages (DDPM pretraining + generation; contrastive + captioning vision-language pretraining with
zero-shot classification and report generation; InternVL instruction tuning through the core finetune).

Importing the package registers the encoder, the media reader and the eval tasks (``brainfound_mcq``,
``brainfound_report``). Stage CLIs: ``python -m patches.brainfound.{pretrain_ddpm,generate,pretrain_clip,zero_shot,
demo}`` (YAML + ``--set``) and Brainfound's own command lines ``python -m patches.brainfound.{pretrain,
zero_shot_cls}`` (see ``brainfound_cli``). The neuro plugin is used only through ``patches.neuro.api``.
"""
from patches.brainfound import encoder  # noqa: F401  (registers brainfound_unet)
from patches.brainfound import reader  # noqa: F401  (registers the meditk media kind)
from patches.brainfound import tasks  # noqa: F401  (registers brainfound_mcq, brainfound_report)
