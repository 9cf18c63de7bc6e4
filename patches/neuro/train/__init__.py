"""NeuroVFM-style training of the neuro encoders, driven by one YAML config: volumetric JEPA pretraining
(``VisionPretrainingSystem``) and study classification with MIL pooling (``VisionClassificationSystem``).

    python -m patches.neuro.train -c CONFIG.yaml          # see shell/neuro/config/ and patches/neuro/README.md

Modules: ``schema`` (the nested-config checker) and ``config`` (the YAML's schema; unknown keys are errors),
``data`` (studies -> seeded items), ``jepa`` and ``classify`` (the two systems), ``optim`` (optimisers, LR
schedules), ``checkpoint`` (safetensors checkpoints + JSON state), ``loop`` (the run), ``plots`` (epoch curves),
``demo_data`` (synthetic studies from the demo generator), ``compare_init`` (pretrained vs random-init backbone
over seeds).
The backbones are the registered VLM encoders, so ``--vision_overrides '{"pretrained": ".../last.ckpt",
"remove_prefix": "student_encoder."}'`` puts a trained backbone into the VLM.
"""
