"""Every registered vision encoder meets the contract and round-trips with identical weights and logits,
standalone (save_pretrained/from_pretrained) and inside an InternVL checkpoint."""
import pytest
import torch

from helpers_model import TINY_QWEN2
from internvl.media import MEDIA_READERS
from internvl.model import (VISION_MODELS, VisionEncoder, create_vision_model, encoder_class, list_vision_models,
                            vision_config_to_dict, vision_model_spec)
from internvl.model.internvl_chat import InternVLChatConfig, InternVLChatModel

ENCODERS = list_vision_models()  # plugins included (entry points), the core's intern_vit always


def tiny(name):
    torch.manual_seed(0)
    return create_vision_model(name, **vision_model_spec(name).tiny_overrides)


def test_core_encoder_registered():
    assert "intern_vit" in ENCODERS


@pytest.mark.parametrize("name", ENCODERS)
def test_contract_and_standalone_round_trip(name, tmp_path):
    enc = tiny(name).eval()
    assert isinstance(enc, VisionEncoder) and enc.config.encoder_name == VISION_MODELS.resolve(name)
    cls = encoder_class(enc.config)
    assert cls is vision_model_spec(name).encoder_class and isinstance(enc.config, cls.config_class)
    kinds = cls.media_kinds(enc.config)
    assert kinds and all(k in MEDIA_READERS for k in kinds), f"{name} reads unregistered kinds {kinds}"
    saved = vision_config_to_dict(enc.config)
    assert not set(cls.machine_local_keys) & set(saved)
    try:
        layers = enc.layer_list()
        assert isinstance(layers, torch.nn.ModuleList) and len(layers) > 0
    except ValueError as exc:  # declared refusal, never an AttributeError
        assert "--unfreeze_vit_layers" in str(exc)
    if cls.supports_gradient_checkpointing:  # declared: then --grad_checkpoint must work on it
        enc.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        enc.gradient_checkpointing_disable()
    item = cls.dummy_input(enc.config)
    with torch.no_grad():
        feats = enc(item.unsqueeze(0))
    feats = feats[0] if isinstance(feats, (list, tuple)) else feats[0]
    assert feats.shape[-1] == enc.config.hidden_size
    assert feats.reshape(-1, feats.shape[-1]).shape[0] == encoder_class(enc.config).num_tokens(enc.config, item)
    enc.save_pretrained(tmp_path)
    again = type(enc).from_pretrained(tmp_path).eval()
    a, b = enc.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ENCODERS)
def test_round_trip_inside_internvl_checkpoint(name, tmp_path):
    enc = tiny(name)
    projector = "mlp1" if name == "intern_vit" else "mlp"
    config = InternVLChatConfig.build(vision=name, vision_overrides=enc.config.to_dict(), llm_config=dict(TINY_QWEN2),
                                      projector=projector)
    torch.manual_seed(1)
    model = InternVLChatModel(config).eval()
    model.img_context_token_id = 317
    item = encoder_class(model.config.vision_config).dummy_input(model.config.vision_config)
    if item.is_floating_point():
        item = item + torch.randn_like(item) * 0.1
    n = model.config.num_context_tokens(item)
    ids = torch.tensor([[11, 12] + [317] * n + [13]])
    model.save_pretrained(tmp_path)
    loaded = InternVLChatModel.from_pretrained(tmp_path)
    loaded.img_context_token_id = 317
    assert type(loaded.vision_model) is type(model.vision_model)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=[item], input_ids=ids).logits,
                           loaded(pixel_values=[item], input_ids=ids).logits)
