"""Media kind ``meditk`` (placeholder ``<meditk>``): Brainfound's JSONL key, so its mcq.jsonl / qa.jsonl work as is.

A row ``{"meditk": "scan.npz", "conversations": [{"from": "human", "value": "<meditk>\\n..."}, ...]}`` names one
volume per ``<meditk>``. The reference is a path (``.npz`` / ``.npy`` / NIfTI / DICOM folder) or a dict
``{"path": ..., "modality": "CT", "num_slices": 32, ...}`` overriding the options below for that scan.

With an encoder that lists ``meditk`` in its config's ``input_kinds`` (``brainfound_unet`` does) the volume
becomes ``num_slices`` slice items ``[3, H, W]`` in [-1, 1] (CT window ``ct_window``, default 160/40; MRI
per-slice min-max; ``slice_select``; resized to the encoder's ``image_size``), so the placeholder expands to
``<img>`` + one run of ``<IMG_CONTEXT>`` x tokens-per-slice for each slice + ``</img>``. With any other encoder
``meditk`` is an alias of the neuro plugin's ``volume`` kind: the reference is handed to its reader unchanged (its
volume items, its preprocessing). The plugin decides by that declared capability, never by the encoder's name,
and reaches the neuro plugin only through ``patches.neuro.api``.

Options (data options / meta-JSON, then the reference dict): ``num_slices``, ``slice_select``, ``ct_window``,
``modality`` (default: the encoder config's), ``npz_key``, ``array_layout`` ("DHW" default, "HWD"),
``augment`` (bool, default False: Brainfound's stage-2 2D augmentations on training reads).
"""
from __future__ import annotations

from typing import Any

import torch

from internvl.media.base import MediaError, MediaReader, register_media_reader
from patches.brainfound.preprocess import (SliceAugment, resize_slices, to_model_input,
                                           volume_to_unit_slices)
from patches.brainfound.volumes import read_raw_volume

_OPTION_KEYS = ("num_slices", "slice_select", "ct_window", "modality", "npz_key", "array_layout", "augment")


def _reads_slices(vision_config) -> bool:
    """Whether the encoder declares ``meditk`` among its ``input_kinds`` (then it takes 2D slice items, as
    ``brainfound_unet`` does); otherwise ``meditk`` references go to the neuro ``volume`` reader."""
    return "meditk" in tuple(getattr(vision_config, "input_kinds", None) or ())


@register_media_reader("meditk")
class MeditkReader(MediaReader):
    kind = "meditk"
    placeholder = "<meditk>"
    placeholder_aliases = ()
    is_file = True
    option_names = frozenset(_OPTION_KEYS)

    def __init__(self, config, options: dict[str, Any] | None = None):
        super().__init__(config, options)
        vc = config.vision_config
        self.slices = _reads_slices(vc)
        self._volume_reader = None
        if not self.slices:
            from patches.neuro.api import VolumeReader

            self._volume_reader = VolumeReader(config, options)
            return
        self.defaults = {
            "num_slices": int(getattr(vc, "num_slices", 32)),
            "slice_select": getattr(vc, "slice_select", "uniform"),
            "ct_window": tuple(getattr(vc, "ct_window", (160, 40))),
            "modality": getattr(vc, "modality", "CT"),
            "npz_key": None, "array_layout": "DHW", "augment": False,
        }
        self.defaults.update({k: self.options[k] for k in _OPTION_KEYS if k in self.options})
        self.image_size = int(vc.image_size)

    def _params(self, ref: Any) -> tuple[str, dict[str, Any]]:
        params = dict(self.defaults)
        if isinstance(ref, str):
            return ref, params
        if isinstance(ref, dict) and (ref.get("path") or ref.get("file")):
            unknown = set(ref) - {"path", "file", "series_uid", *_OPTION_KEYS}
            if unknown:
                raise MediaError(f"{ref.get('path') or ref.get('file')}: unknown meditk option(s) {sorted(unknown)}")
            params.update({k: v for k, v in ref.items() if k in _OPTION_KEYS})
            params["series_uid"] = ref.get("series_uid")
            return ref.get("path") or ref.get("file"), params
        raise MediaError(f"unsupported meditk reference {ref!r} (a path or a dict with 'path')")

    def load(self, ref: Any, *, is_train: bool = False) -> list[torch.Tensor]:
        if self._volume_reader is not None:
            return self._volume_reader.load(ref, is_train=is_train)
        path, p = self._params(ref)
        vol = read_raw_volume(path, modality=p["modality"], npz_key=p["npz_key"], array_layout=p["array_layout"],
                              series_uid=p.get("series_uid"))
        unit = volume_to_unit_slices(vol.array, vol.modality or "CT", int(p["num_slices"]),
                                     slice_select=p["slice_select"], window=tuple(p["ct_window"]))
        if is_train and p["augment"]:
            aug = SliceAugment(size=self.image_size, rot90=False, rotate_rad=0.2, gamma_prob=0.1)
            unit = aug(unit, torch.Generator().manual_seed(int(torch.randint(0, 2 ** 31 - 1, ()))))
        else:
            unit = resize_slices(unit, self.image_size)
        return list(to_model_input(unit).unbind(0))

    def check(self, ref: Any) -> None:
        """A full read and preprocessing, so bad files fail in check_data rather than mid-training."""
        self.load(ref, is_train=False)
