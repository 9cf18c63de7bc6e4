"""Strict pretrained-backbone loading into a neuro encoder: prefix selection, equal weights, and a clear error
naming the file for missing/unexpected keys, shape mismatches, pickles and missing files."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from internvl.model.vision.base import create_vision_model
from patches.neuro.encoders.pretrained import PretrainedLoadError


def _save(model, path, prefix="backbone.", extra=None, drop=()):
    state = {prefix + k: v.clone().contiguous() for k, v in model.state_dict().items() if k not in drop}
    state.update(extra or {})
    save_file(state, str(path))
    return str(path)


@pytest.mark.parametrize("name", ["brain3d_vit_tiny", "neurovfm_tokens_tiny"])
def test_strict_load_gives_equal_weights(tmp_path, name):
    torch.manual_seed(1)
    src = create_vision_model(name)
    path = _save(src, tmp_path / "b.ckpt", extra={"pooler.head.weight": torch.zeros(2, 2)})
    torch.manual_seed(2)
    dst = create_vision_model(name, pretrained=path, remove_prefix="backbone.", study_pooling="bag")
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in dst.state_dict().items() if not k.startswith("mil."))
    assert type(dst).machine_local_keys == ("pretrained", "remove_prefix")
    from internvl.model import vision_config_to_dict

    saved = vision_config_to_dict(dst.config)  # what a VLM checkpoint stores: no path of this machine
    assert "pretrained" not in saved and "remove_prefix" not in saved and dst.config.pretrained == path


def test_mismatches_name_the_file(tmp_path):
    src = create_vision_model("neurovfm_tokens_tiny")
    missing = _save(src, tmp_path / "missing.ckpt", drop=("norm.weight",))
    with pytest.raises(PretrainedLoadError, match=r"missing.ckpt: backbone keys do not match .*missing \['norm.weight'\]"):
        create_vision_model("neurovfm_tokens_tiny", pretrained=missing, remove_prefix="backbone.")
    extra = _save(src, tmp_path / "extra.ckpt", extra={"backbone.head.w": torch.zeros(1)})
    with pytest.raises(PretrainedLoadError, match=r"extra.ckpt: .*unexpected \['head.w'\]"):
        create_vision_model("neurovfm_tokens_tiny", pretrained=extra, remove_prefix="backbone.")
    with pytest.raises(PretrainedLoadError, match="shape mismatch"):
        create_vision_model("neurovfm_tokens_tiny", pretrained=extra.replace("extra", "missing"),
                            remove_prefix="backbone.", hidden_size=60)
    pickle = tmp_path / "weights.pt"
    torch.save(src.state_dict(), pickle)
    with pytest.raises(PretrainedLoadError, match=r"weights.pt: not a safetensors file .*not loaded"):
        create_vision_model("neurovfm_tokens_tiny", pretrained=str(pickle))
    with pytest.raises(PretrainedLoadError, match="nope.ckpt: pretrained backbone file not found"):
        create_vision_model("neurovfm_tokens_tiny", pretrained=str(tmp_path / "nope.ckpt"))
