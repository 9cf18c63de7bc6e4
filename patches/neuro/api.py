"""Public API of the neuro plugin for other plugins (today: Brainfound). Import from here, not from the modules.

Other plugins depend on these names only; everything else in ``patches.neuro`` is internal and may change. Each
name keeps the behaviour documented in its own module:

* ``read_volume(path, ndim=3, series_uid=None) -> Volume``: NIfTI / DICOM series reading with validation
  (raises ``VolumeError``, a ``MediaError`` whose message starts with the file);
* ``Volume``: the array + affine + spacing + metadata ``read_volume`` returns;
* ``VolumeError``: the error type of unusable volumes;
* ``PreprocessConfig`` / ``VolumePreprocessor``: orientation, resampling, intensity steps
  (``VolumePreprocessor(cfg).reorient(volume)`` gives the ``(D, H, W)`` array in the configured orientation);
* ``VolumeReader``: the ``volume`` media reader (3D items for the volume encoders), for plugins whose own media kind
  falls back to it.

Importing this module imports the neuro package, which registers its encoders, readers and tasks.
"""
from __future__ import annotations

from patches.neuro.preprocess import PreprocessConfig, VolumePreprocessor
from patches.neuro.readers import VolumeReader
from patches.neuro.volume_io import Volume, VolumeError, read_volume

__all__ = ["read_volume", "Volume", "VolumeError", "PreprocessConfig", "VolumePreprocessor", "VolumeReader"]
