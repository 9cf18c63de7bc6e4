"""Pathology plugin: whole-slide images -> tile features -> slide tokens for InternVL, plus grade/survival tasks.

Importing this package registers, by name, everything the core looks up (the core never imports it by name):

* vision models: the tile encoders ``virchow2``, ``virchow``, ``uni``, ``uni2_h``, ``h_optimus_0``,
  ``prov_gigapath``, ``virchow2_tiny`` (``encoders.py``) and ``slide_features`` (``slide_encoder.py``);
* projectors (slide aggregators): ``perceiver_resampler`` and ``abmil`` (``aggregators.py``);
* media kinds: ``features`` (cached feature files) and ``wsi`` (slides, via the feature cache) (``readers.py``);
* eval tasks: ``tumour_grade`` and ``survival`` (``tasks.py``);
* the ``wsi`` media viewer for the web demo and the HTML report (``viewer.py``).

Feature extraction CLI: ``python -m patches.pathology.extract`` (also under ``torchrun``: ``distributed.py``);
throughput table: ``python -m patches.pathology.bench``; synthetic demo data: ``patches.pathology.demo``.
TRIDENT / CLAM feature files are read by the ``features`` media kind as they are (``features.py``).
"""
from patches.pathology import aggregators, encoders, readers, slide_encoder, tasks, viewer  # noqa: F401  (registration)
