"""Training: the torch ``Dataset`` over meta-JSON datasets (``dataset``), which samples are drawn (``sampling``),
what trains (``freeze``), the Trainer subclass (``trainer_utils``), the arguments and the finetune entry point.

Rows become tokens in ``internvl.data`` (the processor), shared with evaluation and chat; nothing here is imported
by ``internvl.model``, ``internvl.media`` or ``internvl.evaluation``.
"""
