"""Media readers for slides: ``"features": "x.h5"`` (cached tile features) and ``"wsi": "x.svs"`` (a slide).

Both yield one item per reference: a float32 bag ``[N_tiles, D]`` for the ``slide_features`` vision model.

``features``: reads a feature file written by ``extract.py`` (either layout) or by TRIDENT / CLAM (``.h5`` with
``features``/``coords``, or a ``.pt`` tensor; see ``features.py``). The feature width must equal the vision config's
``feature_dim`` and, when the vision config names a ``tile_encoder``, the encoder that made the file must match:
taken from the file, else from a sidecar JSON (``<file>.json``: ``{"encoder": "uni"}``), else from the dataset's
meta-JSON option ``"feature_encoder"``; a file of unknown origin is then an error too. Every error names the file.

``wsi``: looks the slide up in the feature cache (``options["feature_cache"]`` or ``vision_config.feature_cache``;
file ``<cache>/<slide stem>-<settings key>.h5``, or ``<cache>/<slide stem>.h5`` as ``extract.py --out <cache>`` writes
it; valid only if written with the same settings for a slide of the same size and mtime) and otherwise extracts it on the fly with the vision config's tile encoder, if the slide has at
most ``max_tiles_on_the_fly`` tissue tiles; larger slides must be extracted beforehand with
``python -m patches.pathology.extract`` (the error says so).

Bags larger than ``max_tiles`` (option or vision config) are subsampled: a random subset while training (a cheap
augmentation), evenly spaced tiles otherwise (deterministic evaluation). Tile order is kept.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from internvl.media.base import MediaError, MediaReader, register_media_reader
from patches.pathology.features import FeatureFileError, is_finished, read_features, source_fingerprint
from patches.pathology.wsi import SlideError

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "internvl_med", "wsi_features")


def subsample(bag: torch.Tensor, max_tiles: int | None, is_train: bool) -> torch.Tensor:
    if not max_tiles or bag.shape[0] <= max_tiles:
        return bag
    if is_train:
        index = torch.randperm(bag.shape[0])[:max_tiles].sort().values
    else:
        index = torch.from_numpy(np.linspace(0, bag.shape[0] - 1, max_tiles).round().astype(np.int64))
    return bag[index]


class _BagReader(MediaReader):
    placeholder = "<image>"
    is_file = True
    option_names = frozenset({"tile_encoder", "max_tiles", "feature_encoder"})

    @property
    def vision_config(self):
        return self.config.vision_config

    def _option(self, name: str, default=None):
        if name in self.options and self.options[name] is not None:
            return self.options[name]
        return getattr(self.vision_config, name, default)

    def _bag(self, path: str, is_train: bool) -> torch.Tensor:
        try:
            ff = read_features(path)
        except FeatureFileError as exc:
            raise MediaError(str(exc)) from exc
        made_by, source = ff.encoder, ff.encoder_source
        if made_by is None and self.options.get("feature_encoder"):
            made_by, source = str(self.options["feature_encoder"]), "meta option feature_encoder"
        want = getattr(self.vision_config, "feature_dim", self.vision_config.hidden_size)
        if ff.features.shape[1] != want:
            raise MediaError(f"{path}: features are {ff.features.shape[1]}-d (encoder {made_by!r}) but the vision "
                             f"model expects {want}-d")
        encoder = self._option("tile_encoder")
        if encoder and made_by is None:
            raise MediaError(f"{path}: the file does not say which tile encoder made it and the model expects "
                             f"{encoder!r}; add a sidecar {path}.json with {{\"encoder\": \"{encoder}\"}} or set "
                             f"\"feature_encoder\" in the dataset's meta-JSON entry")
        if encoder and made_by != encoder:
            raise MediaError(f"{path}: made by tile encoder {made_by!r} ({source}), the model expects {encoder!r}")
        if len(ff.features) == 0:
            raise MediaError(f"{path}: no tissue tiles in this feature file (nothing to aggregate)")
        return subsample(torch.from_numpy(ff.features), self._option("max_tiles"), is_train)


@register_media_reader("features")
class FeatureBagReader(_BagReader):
    kind = "features"

    def load(self, ref, *, is_train: bool = False) -> list[torch.Tensor]:
        return [self._bag(str(ref), is_train)]


@functools.lru_cache(maxsize=2)
def _cached_tile_encoder(name: str, weights: str | None, seed: int | None):
    from patches.pathology.extract import load_encoder

    return load_encoder(name, weights, seed, "cpu")


@functools.lru_cache(maxsize=8)
def _weights_identity(weights: str, mtime_ns: int) -> str:
    from patches.pathology.encoders import file_sha256

    return f"{os.path.basename(weights)} sha256:{file_sha256(weights)}"


@register_media_reader("wsi", aliases=("slide",))
class SlideReader(_BagReader):
    kind = "wsi"
    option_names = _BagReader.option_names | {"mpp", "tile_size", "slide_mpp", "tile_encoder_weights",
                                              "tile_encoder_seed", "feature_cache", "max_tiles_on_the_fly", "tissue"}

    def _settings(self):
        """Extraction settings; the ``tissue`` option overrides ``TissueParams`` fields (e.g. ``{"min_area_um2": 0}``
        for a tiny or scale-less slide), and is part of the feature cache key like every other setting."""
        from dataclasses import fields as dc_fields

        from patches.pathology.extract import ExtractSettings
        from patches.pathology.tissue import TissueParams

        tissue = self.options.get("tissue") or {}
        known = {f.name for f in dc_fields(TissueParams)}
        if not isinstance(tissue, dict) or set(tissue) - known:
            raise MediaError(f"wsi option 'tissue' must be an object with keys from {sorted(known)}, got {tissue!r}")
        return ExtractSettings(mpp=float(self._option("mpp", 0.5)), tile_size=self._option("tile_size"),
                               slide_mpp=self.options.get("slide_mpp"), batch_size=32,
                               tissue=TissueParams(**tissue))

    def _encoder_config(self):
        """The tile encoder's config with its weights identity, without building the model."""
        from internvl.model.vision.base import encoder_class

        name = self._option("tile_encoder")
        if not name:
            raise MediaError("the 'wsi' media kind needs vision_config.tile_encoder (which encoder made/makes the "
                             "features)")
        cfg = encoder_class(name).config_class(preset=name)
        cfg.encoder_name = name
        weights, seed = self._option("tile_encoder_weights"), self._option("tile_encoder_seed")
        if weights:
            from patches.pathology.encoders import resolve_weights

            path = resolve_weights(weights, cfg.hf_hub_id)
            cfg.weights_source = _weights_identity(path, os.stat(path).st_mtime_ns)
        elif seed is not None:
            cfg.weights_source = f"random-init seed={int(seed)}"
        else:
            raise MediaError(f"tile encoder {name!r} has no weights configured (vision_config.tile_encoder_weights)")
        return cfg

    def cache_path(self, slide: str, key: str) -> str:
        cache = self._option("feature_cache") or DEFAULT_CACHE
        return os.path.join(cache, f"{Path(slide).stem}-{key[:16]}.h5")

    def load(self, ref, *, is_train: bool = False) -> list[torch.Tensor]:
        from patches.pathology.extract import extract_slide, settings_key
        from patches.pathology.wsi import open_slide, plan_tiles, slide_info, target_mpp_for

        slide = str(ref)
        if not os.path.exists(slide):
            raise MediaError(f"{slide}: slide file not found")
        settings, cfg = self._settings(), self._encoder_config()
        key = settings_key(cfg, settings)
        fingerprint = source_fingerprint(slide)
        out = self.cache_path(slide, key)
        plain = os.path.join(os.path.dirname(out), Path(slide).stem + ".h5")  # what extract.py --out writes
        if not is_finished(out, key, fingerprint) and is_finished(plain, key, fingerprint):
            out = plain
        if not is_finished(out, key, fingerprint):
            try:
                handle = open_slide(slide)
                try:
                    info = slide_info(handle, slide, settings.slide_mpp)
                    plan = plan_tiles(handle, info, target_mpp_for(info, settings.mpp), settings.resolved_tile(cfg),
                                      settings.tissue)
                finally:
                    handle.close()
                limit = int(self._option("max_tiles_on_the_fly", 4096))
                if len(plan.coords) > limit:
                    raise MediaError(f"{slide}: {len(plan.coords)} tissue tiles exceed max_tiles_on_the_fly={limit}; "
                                     f"extract it first: python -m patches.pathology.extract --slides {slide} "
                                     f"--encoder {cfg.encoder_name} --out {os.path.dirname(out)}")
                encoder = _cached_tile_encoder(cfg.encoder_name, self._option("tile_encoder_weights"),
                                               self._option("tile_encoder_seed"))
                extract_slide(slide, encoder, settings, out, key=key, progress=False)
            except SlideError as exc:
                raise MediaError(str(exc)) from exc
        return [self._bag(out, is_train)]

    def check(self, ref) -> None:
        from patches.pathology.wsi import open_slide

        try:
            open_slide(str(ref)).close()
        except SlideError as exc:
            raise MediaError(str(exc)) from exc
