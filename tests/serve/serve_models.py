"""Tiny untrained models for the web-demo tests: the embedded tiny InternVL with its vision side replaced, as
the plugin demos' finetune launchers do (``shell/pathology/demo_finetune_tiny.sh``, ``shell/neuro/...``), but
saved without training: a slide model (``slide_features`` over ``virchow2_tiny`` tile features) and a volume
model (``brain3d_vit_tiny`` + ``spatial_pool_mlp``). Also a synthetic NIfTI volume, and a synthetic tissue slide
from the pathology demo's generator (the real-format fixture slides are too small or have no tissue for the
tissue mask, so the reader finds no tile to encode in them; they are shown in the viewer only)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

FIXTURE_SLIDE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "wsi" / "boxes.tiff"
SLIDE_VISION = {"feature_dim": 192, "tile_encoder": "virchow2_tiny", "tile_encoder_seed": 0, "max_tiles": 16}
VOLUME_VISION = {"preprocess": {"target_spacing": [1.5, 1.5, 1.5]}}


def replaced_vision(base_dir: Path, out: Path, vision_model: str, overrides: dict, projector: str,
                    projector_config: dict) -> Path:
    import torch
    from transformers import AutoTokenizer

    from internvl.model import create_vision_model
    from internvl.model.internvl_chat import InternVLChatConfig, InternVLChatModel

    torch.manual_seed(0)
    model = InternVLChatModel.from_pretrained(str(base_dir))
    old = model.config
    encoder = create_vision_model(vision_model, **overrides)
    fields = {k: getattr(old, k) for k in ("select_layer", "template", "dynamic_image_size", "use_thumbnail",
                                          "ps_version", "min_dynamic_patch", "max_dynamic_patch", "pad2square")}
    config = InternVLChatConfig(vision_config=encoder.config, llm_config=old.llm_config, projector=projector,
                                projector_config=projector_config,
                                force_image_size=getattr(encoder.config, "image_size", None),
                                downsample_ratio=0.5, **fields)
    new = InternVLChatModel(config, vision_model=encoder, language_model=model.language_model).float()
    new.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(str(out))
    return out


def slide_model(base_dir: Path, out: Path) -> Path:
    return replaced_vision(base_dir, out, "slide_features", SLIDE_VISION, "perceiver_resampler",
                           {"num_tokens": 8, "dim": 128, "heads": 4, "depth": 1})


def volume_model(base_dir: Path, out: Path) -> Path:
    return replaced_vision(base_dir, out, "brain3d_vit_tiny", VOLUME_VISION, "spatial_pool_mlp", {"pool": 2})


def synthetic_volume(path: Path) -> Path:
    """A 48^3 CT-like head at 1.5 mm: skull (bone HU), brain (35 HU) and a bright lesion on the left."""
    import nibabel as nib

    x, y, z = np.mgrid[-1:1:48j, -1:1:48j, -1:1:48j]  # array axes i, j, k = x, y, z of the affine
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    vol = np.full(r.shape, -1000.0, np.float32)
    vol[r < 0.9] = 900.0
    vol[r < 0.8] = 35.0
    vol[((x + 0.4) ** 2 + y ** 2 + z ** 2) < 0.04] = 70.0
    nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 1.5, 1.0])), str(path))
    return path


def synthetic_slide(path: Path) -> Path:
    """A 672 µm square 20x pyramidal TIFF (0.5 µm/px) from ``patches.pathology.demo.make_slide``: 36 tissue tiles."""
    from patches.pathology.demo import make_slide

    make_slide(str(path), grade=2, rng=np.random.default_rng(0))
    return path
