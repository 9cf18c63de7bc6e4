"""Slide-level input: feature/wsi media readers, slide_features encoder, aggregators to K tokens, model forward."""
from __future__ import annotations

import pytest
import torch

from internvl.media import MediaError, reader_for_key
from internvl.model.internvl_chat import InternVLChatConfig
from patches.pathology.extract import ExtractSettings, run

LLM = {"model_type": "qwen2", "hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 2,
       "num_key_value_heads": 1, "intermediate_size": 64, "vocab_size": 96}


def _config(projector: str, k: int = 6, dim: int = 192, **vision):
    vision.setdefault("tile_encoder", "virchow2_tiny")
    return InternVLChatConfig.build(vision="slide_features", vision_overrides={"feature_dim": dim, **vision},
                                    llm_config=LLM, projector=projector,
                                    projector_config={"num_tokens": k, "dim": 32, "heads": 4})


@pytest.fixture(scope="module")
def feats_dir(slide_dir, tiny_encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("feats")
    run(sorted(slide_dir.iterdir()), tiny_encoder, ExtractSettings(), str(out), progress=False)
    return out


@pytest.mark.parametrize("projector", ["perceiver_resampler", "abmil"])
def test_aggregators_map_any_bag_size_to_k_tokens(projector):
    from internvl.model.projector import create_projector
    from internvl.model.vision.base import create_vision_model

    cfg = _config(projector, k=5)
    torch.manual_seed(0)
    enc, agg = create_vision_model("slide_features", feature_dim=192), create_projector(cfg)
    bags = [torch.randn(n, 192) for n in (1, 7, 3000)]
    out = agg(enc(bags))
    assert [tuple(o.shape) for o in out] == [(5, 48)] * 3
    assert agg.num_output_tokens(cfg, 3000) == 5
    assert cfg.num_context_tokens(bags[2]) == 5  # what <IMG_CONTEXT> is expanded to, whatever N is
    # bags are independent (no padding leaks between them) and tile order does not matter
    alone = agg(enc([bags[1]]))[0]
    torch.testing.assert_close(alone, out[1])
    torch.testing.assert_close(agg(enc([bags[1][torch.randperm(7)]]))[0], out[1], atol=1e-5, rtol=1e-4)
    sum(o.sum() for o in out).backward()
    assert all(p.grad is not None for p in agg.parameters())
    stacked = agg(enc(torch.randn(2, 4, 192)))  # equal-size bags may come stacked
    assert stacked.shape == (2, 5, 48)


def test_abmil_attention_is_a_distribution_over_tiles():
    from internvl.model.projector import create_projector

    agg = create_projector(_config("abmil", k=3)).eval()
    agg([torch.randn(11, 192)])
    assert agg.last_attention.shape == (11, 3)
    torch.testing.assert_close(agg.last_attention.sum(0), torch.ones(3))


def test_features_reader_and_validation(feats_dir, tmp_path):
    cfg = _config("perceiver_resampler", tile_encoder="virchow2_tiny", max_tiles=4)
    reader = reader_for_key("features")(cfg, {})
    path = str(feats_dir / "g3_aperio.h5")
    bag = reader.load(path)[0]
    assert bag.shape == (4, 192) and bag.dtype == torch.float32  # evenly spaced subset at eval time
    assert torch.equal(bag, reader.load(path)[0])
    draws = [reader.load(path, is_train=True)[0] for _ in range(5)]  # random subsets while training
    assert all(d.shape == (4, 192) for d in draws) and not all(torch.equal(draws[0], d) for d in draws[1:])
    full = reader_for_key("features")(_config("abmil"), {}).load(path)[0]
    assert full.shape[0] > 4
    with pytest.raises(MediaError, match="g3_aperio.h5.*192-d.*expects 2560-d"):
        reader_for_key("features")(_config("abmil", dim=2560), {}).load(path)
    with pytest.raises(MediaError, match="made by tile encoder 'virchow2_tiny'.*'uni'"):
        reader_for_key("features")(_config("abmil", tile_encoder="uni"), {}).load(path)
    with pytest.raises(MediaError, match="missing.h5: feature file not found"):
        reader.load(str(tmp_path / "missing.h5"))
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(MediaError, match="junk.h5: not a readable HDF5"):
        reader.load(str(tmp_path / "junk.h5"))


def test_wsi_reader_uses_cache_or_extracts_small_slides(slide_dir, feats_dir, tmp_path, broken_dir):
    cache = tmp_path / "cache"
    cfg = _config("abmil", tile_encoder="virchow2_tiny", tile_encoder_seed=0, feature_cache=str(cache))
    reader = reader_for_key("wsi")(cfg, {})
    slide = str(slide_dir / "g1_generic.tiff")
    bag = reader.load(slide)[0]  # extracted on the fly into the cache
    cached = list(cache.glob("g1_generic-*.h5"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    torch.testing.assert_close(reader.load(slide)[0], bag)
    assert cached[0].stat().st_mtime_ns == mtime  # second load: from the cache
    # identical to what the extraction CLI wrote (same key: same encoder, weights identity, settings)
    cli = reader_for_key("features")(cfg, {}).load(str(feats_dir / "g1_generic.h5"))[0]
    torch.testing.assert_close(bag, cli)
    # the CLI's own file layout in the cache folder is found as well
    found = reader_for_key("wsi")(cfg, {"feature_cache": str(feats_dir)})
    torch.testing.assert_close(found.load(str(slide_dir / "g2_generic.tiff"))[0],
                               reader_for_key("features")(cfg, {}).load(str(feats_dir / "g2_generic.h5"))[0])
    small = reader_for_key("wsi")(cfg, {"max_tiles_on_the_fly": 2, "feature_cache": str(tmp_path / "c2")})
    with pytest.raises(MediaError, match="exceed max_tiles_on_the_fly=2.*patches.pathology.extract"):
        small.load(str(slide_dir / "g3_aperio.svs"))
    with pytest.raises(MediaError, match="truncated.tiff: not a whole-slide image"):
        reader.load(str(broken_dir / "truncated.tiff"))
    with pytest.raises(MediaError, match="photo.png"):
        reader.check(str(broken_dir / "photo.png"))


@pytest.mark.parametrize("projector", ["perceiver_resampler", "abmil"])
def test_internvl_forward_on_feature_bags(projector, feats_dir):
    from internvl.model.internvl_chat import InternVLChatModel

    torch.manual_seed(0)
    cfg = _config(projector, k=4)
    model = InternVLChatModel(cfg)
    model.img_context_token_id = 7
    reader = reader_for_key("features")(cfg, {})
    bags = [reader.load(str(feats_dir / f))[0] for f in ("g1_generic.h5", "g2_generic.h5", "g3_aperio.h5")]
    bags = [b for b in bags if b.shape[0] != bags[0].shape[0]][:1] + bags[:1]
    assert len(bags) == 2 and bags[0].shape[0] != bags[1].shape[0]  # variable-length items
    ids = torch.tensor([[1, 2] + [7] * 4 + [3, 4], [5] + [7] * 4 + [6, 8, 9]])
    out = model(pixel_values=bags, input_ids=ids, labels=ids, image_flags=torch.tensor([1, 1]))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.mlp1.inp[1].weight.grad is not None
