"""Our InternVLChatModel computes what transformers' InternVLForConditionalGeneration computes (fp32, <= 1e-5)."""
import pytest
import torch
from transformers import InternVLConfig, InternVLForConditionalGeneration

from helpers_model import IMG_ID, inputs, tiny_model
from internvl.model.checkpoint import hf_state_to_ours, ours_state_to_hf


def native_twin(model):
    cfg = model.config
    hf_cfg = InternVLConfig(vision_config=cfg.vision_config.to_hf().to_dict(), text_config=cfg.llm_config.to_dict(),
                            image_token_id=IMG_ID, image_seq_length=cfg.num_image_token,
                            downsample_ratio=cfg.downsample_ratio, vision_feature_layer=cfg.select_layer,
                            tie_word_embeddings=False)
    hf = InternVLForConditionalGeneration(hf_cfg).eval()
    hf.load_state_dict(ours_state_to_hf(model.state_dict()), strict=True)
    return hf


@pytest.mark.parametrize("select_layer", [-1, -2])
@pytest.mark.parametrize("n_tiles", [1, 3])
def test_logits_match_native(select_layer, n_tiles):
    model = tiny_model(select_layer=select_layer)
    hf = native_twin(model)
    ids, pv = inputs(n_tiles, model.num_image_token)
    with torch.no_grad():
        ours = model(pixel_values=pv, input_ids=ids).logits
        theirs = hf(pixel_values=pv, input_ids=ids).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_hf_key_mapping_is_a_bijection():
    model = tiny_model()
    state = model.state_dict()
    assert set(hf_state_to_ours(ours_state_to_hf(state))) == set(state)


def test_vision_embeddings_fill_context_positions_in_order():
    model = tiny_model()
    ids, pv = inputs(2, model.num_image_token)
    merged = model._merge(ids, pv)
    feats = model.extract_feature(pv).reshape(-1, merged.shape[-1])
    assert torch.equal(merged[0, 3:3 + feats.shape[0]], feats)
    # swapping the two tiles swaps the two runs
    merged_swapped = model._merge(ids, pv.flip(0))
    n = model.num_image_token
    assert torch.equal(merged_swapped[0, 3:3 + n], merged[0, 3 + n:3 + 2 * n])


def test_dummy_items_contribute_nothing_but_stay_in_graph():
    model = tiny_model()
    ids, pv = inputs(1, model.num_image_token)
    flags = torch.tensor([1, 0])
    both = torch.cat([pv, torch.randn(1, 3, 56, 56)])
    out = model(pixel_values=both, input_ids=ids, image_flags=flags, labels=ids)
    ref = model(pixel_values=pv, input_ids=ids, labels=ids)
    assert torch.allclose(out.logits, ref.logits, atol=1e-6)
    out.loss.backward()
    patch = model.vision_model.vit.embeddings.patch_embeddings.projection.weight
    assert patch.grad is not None


def test_text_only_batch_runs_vision_path_with_zero_contribution():
    model = tiny_model()
    ids = torch.randint(0, 300, (2, 7))
    dummy = torch.zeros(1, 3, 56, 56)
    out = model(pixel_values=dummy, input_ids=ids, image_flags=torch.tensor([0]), labels=ids)
    plain = model(input_ids=ids, labels=ids)
    assert torch.allclose(out.logits, plain.logits, atol=1e-6)
    out.loss.backward()
    assert model.mlp1[1].weight.grad is not None
    assert model.mlp1[1].weight.grad.abs().sum() == 0


def test_token_count_mismatch_raises():
    model = tiny_model()
    ids, pv = inputs(2, model.num_image_token)
    with pytest.raises(ValueError, match="IMG_CONTEXT"):
        model(pixel_values=pv[:1], input_ids=ids)


def test_ps_v1_differs_from_v2():
    v2 = tiny_model(ps_version="v2")
    v1 = tiny_model(ps_version="v1")
    ids, pv = inputs(1, v2.num_image_token)
    with torch.no_grad(), pytest.warns(UserWarning, match="v1"):
        a = v1(pixel_values=pv, input_ids=ids).logits
    b = v2(pixel_values=pv, input_ids=ids).logits
    assert not torch.allclose(a, b)


def test_drop_path_only_in_training():
    model = tiny_model(vision=dict(drop_path_rate=0.5))
    ids, pv = inputs(1, model.num_image_token)
    plain = tiny_model()
    with torch.no_grad():
        assert torch.allclose(model(pixel_values=pv, input_ids=ids).logits,
                              plain(pixel_values=pv, input_ids=ids).logits, atol=1e-6)
        model.vision_model.train()
        torch.manual_seed(0)
        outs = [model.vision_model(pv) for _ in range(4)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])
