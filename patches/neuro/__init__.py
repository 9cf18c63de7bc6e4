"""Neuro-imaging plugin: 3D brain MRI/CT volumes (NIfTI, DICOM series), 4D rsfMRI, 3D encoders, volume projectors.

Importing this package registers (the core finds it through the ``internvl.plugins`` entry point ``neuro``):

* media readers ``volume`` (3D, single series or multi-series studies) and ``fmri`` (4D)   -> ``readers``
* vision encoders ``brain3d_vit``, ``brain3d_vit_tiny``, ``brain3d_vit_4d``, ``brain3d_vit_4d_tiny``,
  ``neurovfm_tokens``, ``neurovfm_tokens_tiny``                                            -> ``encoders``
* projectors ``spatial_pool_mlp``, ``volume_perceiver``, ``qformer``                               -> ``projectors``
* eval tasks ``neuro_classification``, ``neuro_regression``                                -> ``tasks``
* the ``volume`` media viewer (web demo, HTML report)                                     -> ``viewer``

Not imported on plugin load: ``patches.neuro.train`` (``python -m patches.neuro.train -c CONFIG.yaml``, NeuroVFM-
style JEPA pretraining and study classification of these encoders) and ``patches.neuro.augment`` (MONAI volume
augmentations, also used by the ``volume`` reader for ``data_augment`` datasets).

The reusable volume I/O (``read_volume``, ``Volume``, ``VolumePreprocessor``, ``PreprocessConfig``,
``VolumeCache``, ``prepared_volume``) lives in ``volume_io``, ``preprocess`` and ``cache``; see their docstrings.
"""
from patches.neuro import encoders, projectors, readers, tasks, viewer  # noqa: F401  (registration on import)
from patches.neuro.cache import VolumeCache, prepared_volume
from patches.neuro.preprocess import PreprocessConfig, VolumePreprocessor
from patches.neuro.volume_io import Volume, VolumeError, read_volume

__all__ = ["Volume", "VolumeError", "read_volume", "PreprocessConfig", "VolumePreprocessor", "VolumeCache",
           "prepared_volume"]
