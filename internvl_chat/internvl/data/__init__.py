"""Data: InternVL's meta JSON and JSONL rows, and the one processor that turns a row into model inputs.

``processor.RowProcessor`` is the only place where a row's media references are found, read and counted and where
placeholders become ``<img><IMG_CONTEXT>...</img>`` runs; training (``internvl.train.dataset``), evaluation
(``internvl.evaluation``), ``chat()``/``inference_v2.py`` and ``check_data`` all call it. Below it: ``meta`` (meta
JSON), ``jsonl`` (lazy rows), ``tokenize`` (template -> ids/labels), ``collate`` (batches), ``errors``.
Depends on ``internvl.media`` and ``internvl.model``; never on ``internvl.train`` or ``internvl.evaluation``.
"""
