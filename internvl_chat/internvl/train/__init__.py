"""Training data pipeline and entry points: templates -> tokens (``preprocess``), meta JSON + JSONL datasets
(``meta``, ``dataset``), batching (``collate``), and the finetune script.

Kept import-free on purpose: ``internvl.media.image`` imports ``internvl.train.constants``, so importing this
package must not pull in ``internvl.media`` (no circular import).
"""
