"""TRIDENT / CLAM feature files through the ``features`` media kind: .h5 (features + coords, no attributes) and
.pt tensors (weights_only), the encoder identity from a sidecar or the meta option, errors that name the file."""
from __future__ import annotations

import json
from fractions import Fraction

import h5py
import numpy as np
import pytest
import torch

from internvl.media import MediaError, reader_for_key
from internvl.model.internvl_chat import InternVLChatConfig

LLM = {"model_type": "qwen2", "hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2,
       "num_key_value_heads": 1, "intermediate_size": 64, "vocab_size": 96}


def _reader(options=None, dim: int = 64, tile_encoder: str | None = "uni"):
    cfg = InternVLChatConfig.build(vision="slide_features", llm_config=LLM, projector="abmil",
                                   vision_overrides={"feature_dim": dim, "tile_encoder": tile_encoder},
                                   projector_config={"num_tokens": 2, "dim": 16})
    return reader_for_key("features")(cfg, options or {})


def _trident_h5(path, feats: np.ndarray, **feature_attrs) -> str:
    with h5py.File(path, "w") as h5:
        ds = h5.create_dataset("features", data=feats)
        for k, v in feature_attrs.items():
            ds.attrs[k] = v
        h5.create_dataset("coords", data=np.zeros((feats.shape[-2], 2), np.int64))
    return str(path)


def test_trident_h5_identity_from_meta_option_or_sidecar(tmp_path):
    feats = np.random.default_rng(0).normal(size=(7, 64)).astype(np.float32)
    path = _trident_h5(tmp_path / "slide.h5", feats)
    with pytest.raises(MediaError, match=r"slide.h5: the file does not say which tile encoder.*'uni'.*sidecar"):
        _reader().load(path)
    bag = _reader({"feature_encoder": "uni"}).load(path)[0]
    assert torch.equal(bag, torch.from_numpy(feats))
    with pytest.raises(MediaError, match=r"slide.h5: made by tile encoder 'virchow2' \(meta option"):
        _reader({"feature_encoder": "virchow2"}).load(path)
    (tmp_path / "slide.h5.json").write_text(json.dumps({"encoder": "uni"}))
    assert torch.equal(_reader().load(path)[0], bag)  # the sidecar names it
    (tmp_path / "slide.h5.json").write_text(json.dumps({"encoder": "conch_v15"}))
    with pytest.raises(MediaError, match=r"slide.h5: made by tile encoder 'conch_v15' \(sidecar"):
        _reader({"feature_encoder": "uni"}).load(path)  # the file's own sidecar wins over the dataset default
    assert _reader(tile_encoder=None).load(path)[0].shape == (7, 64)  # a model that names no encoder: no check
    wide = _trident_h5(tmp_path / "wide.h5", np.zeros((3, 1024), np.float32), encoder="uni")
    with pytest.raises(MediaError, match=r"wide.h5: features are 1024-d \(encoder 'uni'\).*expects 64-d"):
        _reader().load(wide)
    batched = _trident_h5(tmp_path / "batched.h5", feats[None], encoder="uni")  # [1, N, D] as some tools save
    assert torch.equal(_reader().load(batched)[0], bag)
    named = _trident_h5(tmp_path / "named.h5", feats, encoder="uni_v1")  # TRIDENT's own name for UNI
    assert torch.equal(_reader().load(named)[0], bag)


def test_clam_pt_files(tmp_path):
    feats = torch.randn(5, 64)
    torch.save(feats, tmp_path / "clam.pt")
    (tmp_path / "clam.json").write_text(json.dumps({"encoder": "uni"}))  # <stem>.json sidecar
    assert torch.allclose(_reader().load(str(tmp_path / "clam.pt"))[0], feats)
    torch.save({"features": feats.half(), "coords": torch.zeros(5, 2, dtype=torch.long)}, tmp_path / "d.pt")
    assert _reader({"feature_encoder": "uni"}).load(str(tmp_path / "d.pt"))[0].dtype == torch.float32
    torch.save({"features": feats, "coords": torch.zeros(4, 2)}, tmp_path / "bad.pt")
    with pytest.raises(MediaError, match=r"bad.pt: features \(5, 64\) and coords \(4, 2\) do not match"):
        _reader({"feature_encoder": "uni"}).load(str(tmp_path / "bad.pt"))
    torch.save({"features": feats, "note": Fraction(1, 3)}, tmp_path / "pickled.pt")  # not weights-only
    with pytest.raises(MediaError, match="pickled.pt: not a readable torch feature file"):
        _reader({"feature_encoder": "uni"}).load(str(tmp_path / "pickled.pt"))
    torch.save(torch.randn(5, 32), tmp_path / "narrow.pt")
    with pytest.raises(MediaError, match=r"narrow.pt: features are 32-d"):
        _reader({"feature_encoder": "uni"}).load(str(tmp_path / "narrow.pt"))
