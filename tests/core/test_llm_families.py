"""Every LLM family InternVL releases ship, loaded from an original-layout checkpoint with the ``llm_config`` fields
those releases carry, and a long-context pass per rope scaling type.

Families and the release whose ``llm_config`` shape each tiny config copies (sizes shrunk, field set and kinds kept):
Qwen2 (InternVL2-1B; InternVL2.5/3 with dynamic rope), Qwen3 (InternVL3.5, tied and untied head), InternLM2
(InternVL2-2B/8B/26B, read through the Llama layout), Phi-3 (InternVL2-4B: ``su`` rope with the top-level
``original_max_position_embeddings``), Llama (InternVL2-40B's Yi, InternVL2-76B's Llama-3).

Each checkpoint is written here as ``config.json`` + ``model.safetensors`` in InternVL's original layout, its LLM
weights taken from a transformers model built directly with transformers' own (v5) ``rope_parameters``, so the
loader's field mapping is checked against an independent reference: same logits, and a rotary embedding whose
``inv_freq`` / ``attention_scaling`` equal the closed forms the config implies (computed here, not by transformers).
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen2Config, Qwen2ForCausalLM
from transformers import Qwen3Config, Qwen3ForCausalLM

from helpers_model import tiny_model
from internvl.model.internvl_chat import InternVLChatModel
from internvl.model.llm import llm_config_for_transformers
from test_checkpoint_layouts import internlm2_state, original_config

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=320, rms_norm_eps=1e-6, hidden_act="silu", bos_token_id=1, eos_token_id=2, pad_token_id=0)
SHORT, LONG = 24, 48  # token counts below and above the tiny configs' pretraining length (32)
PHI3_SHORT = [1.0, 1.05, 1.1, 1.2]  # head_dim 8 -> 4 factors, like the 48 of Phi-3-mini's head_dim 96
PHI3_LONG = [1.5, 3.0, 7.0, 16.0]
TEMPLATE = "internvl2_5"  # where the family's own template does not matter to the test
RELEASE_LEFTOVERS = dict(torch_dtype="bfloat16", transformers_version="4.37.2", use_cache=True)


# ---------------------------------------------------------------------------------------------- release llm_configs
def merged(family_fields: dict, overrides: dict) -> dict:
    return {**SIZES, **RELEASE_LEFTOVERS, **family_fields, **overrides}


def qwen2_release(**fields):  # InternVL2-1B (research note 6.1): sliding-window fields, flash-attn leftover
    return merged(dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"],
                       max_position_embeddings=32, rope_theta=1e6, rope_scaling=None, sliding_window=32,
                       use_sliding_window=False, max_window_layers=2, tie_word_embeddings=False, attention_dropout=0.0,
                       _attn_implementation="flash_attention_2"), fields)


def qwen3_release(tied: bool, **fields):  # InternVL3.5: explicit head_dim != hidden/heads, no rope scaling
    return merged(dict(model_type="qwen3", architectures=["Qwen3ForCausalLM"], head_dim=16,
                       max_position_embeddings=40960, rope_theta=1e6, rope_scaling=None, sliding_window=None,
                       use_sliding_window=False, max_window_layers=2, attention_bias=False, attention_dropout=0.0,
                       tie_word_embeddings=tied, _attn_implementation="flash_attention_2"), fields)


def internlm2_release(**fields):  # InternVL2-2B/8B/26B: dynamic NTK rope, remote-code auto_map, flash-attn
    return merged(dict(model_type="internlm2", architectures=["InternLM2ForCausalLM"], bias=False,
                       max_position_embeddings=32, rope_theta=1e6, rope_scaling={"type": "dynamic", "factor": 2.0},
                       attn_implementation="flash_attention_2", tie_word_embeddings=False,
                       auto_map={"AutoConfig": "configuration_internlm2.InternLM2Config",
                                 "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"}), fields)


def phi3_release(rope_type="su", long_factor=PHI3_LONG, **fields):  # InternVL2-4B (Phi-3-mini-128k)
    return merged(dict(model_type="phi3", architectures=["Phi3ForCausalLM"], num_key_value_heads=4,
                       max_position_embeddings=128, original_max_position_embeddings=32, rope_theta=10000.0,
                       rope_scaling={"type": rope_type, "short_factor": PHI3_SHORT, "long_factor": list(long_factor)},
                       sliding_window=256, embd_pdrop=0.0, resid_pdrop=0.0, attention_dropout=0.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, attn_implementation="flash_attention_2",
                       auto_map={"AutoConfig": "configuration_phi3.Phi3Config",
                                 "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"}), fields)


def llama_release(**fields):  # InternVL2-40B (Nous-Hermes-2-Yi-34B) / InternVL2-76B (Llama-3-70B)
    return merged(dict(model_type="llama", architectures=["LlamaForCausalLM"], rope_theta=5e6,
                       max_position_embeddings=32, rope_scaling=None, attention_bias=False, pretraining_tp=1,
                       tie_word_embeddings=False, _attn_implementation="flash_attention_2"), fields)


# ---------------------------------------------------------------------------------------------- references
def reference_llm(release: dict, rope: dict | None):
    """The transformers LLM the release describes, configured by hand in transformers' own v5 terms."""
    torch.manual_seed(11)
    keep = {k: release[k] for k in SIZES}
    keep["initializer_range"] = 0.2  # sharp attention, so a change of rotary frequencies shows in the logits
    keep["num_key_value_heads"] = release["num_key_value_heads"]
    keep["max_position_embeddings"] = release["max_position_embeddings"]
    keep["tie_word_embeddings"] = release["tie_word_embeddings"]
    rope = dict(rope or {"rope_type": "default"}, rope_theta=release["rope_theta"])
    family = release["model_type"]
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(rope_parameters=rope, **keep))
    elif family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(rope_parameters=rope, head_dim=release["head_dim"], **keep))
    elif family == "phi3":
        keep["rms_norm_eps"] = release["rms_norm_eps"]
        # Phi3Config takes the pretraining length from its top-level field (default 4096), over rope_parameters'
        keep["original_max_position_embeddings"] = release.get("original_max_position_embeddings", 4096)
        model = Phi3ForCausalLM(Phi3Config(rope_parameters=rope, **keep))
    else:  # llama and InternLM2 (same computation)
        model = LlamaForCausalLM(LlamaConfig(rope_parameters=rope, **keep))
    with torch.no_grad():  # non-trivial norms, so a layout or scaling slip cannot hide behind ones
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def vision_state():
    model = tiny_model()
    vm = model.vision_model
    state = {f"vision_model.{k}": v for k, v in vm.state_dict_to_disk(vm.state_dict()).items()}
    state.update({f"mlp1.{k}": v for k, v in model.mlp1.state_dict().items()})
    return state


def write_checkpoint(path, vision_state: dict, release: dict, llm, template: str):
    """An original-layout InternVL checkpoint: InternVL's config.json keys, ``language_model.*`` as InternVL saves."""
    path.mkdir(parents=True, exist_ok=True)
    if release["model_type"] == "internlm2":
        llm_state = internlm2_state(llm, llm.config)
    else:
        llm_state = {f"language_model.{k}": v.clone() for k, v in llm.state_dict().items()}
        if release["tie_word_embeddings"]:
            llm_state.pop("language_model.lm_head.weight")
    save_file({**vision_state, **llm_state}, str(path / "model.safetensors"))
    config = original_config(release)
    config["template"] = template
    # releases also carry a top-level "torch_dtype"; left out here because a re-saved checkpoint then cannot be
    # reloaded (a core defect outside this item, pinned by test_resaved_release_with_top_level_dtype_reloads)
    config.pop("torch_dtype")
    (path / "config.json").write_text(json.dumps(config))
    return path


def load_release(path, vision_state: dict, release: dict, llm, template: str = TEMPLATE):
    return InternVLChatModel.from_pretrained(write_checkpoint(path, vision_state, release, llm, template))


def llm_logits(model, n_tokens: int) -> torch.Tensor:
    ids = torch.randint(3, 300, (1, n_tokens), generator=torch.Generator().manual_seed(n_tokens))
    with torch.no_grad():
        return model(input_ids=ids).logits


def rotary(model):
    return model.language_model.model.rotary_emb


def base_inv_freq(theta: float, dim: int) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


# ---------------------------------------------------------------------------------------------- every release loads
QWEN2_DYNAMIC = {"factor": 2.0, "rope_type": "dynamic", "type": "dynamic"}  # both keys, as InternVL2.5/3 saved it
RELEASES = {
    "qwen2_internvl2_1b": (qwen2_release(), None, "Hermes-2"),
    "qwen2_dynamic_internvl2_5": (qwen2_release(rope_scaling=QWEN2_DYNAMIC), {"rope_type": "dynamic", "factor": 2.0},
                                  "internvl2_5"),
    "qwen3_tied_internvl3_5": (qwen3_release(tied=True), None, "internvl2_5"),
    "qwen3_untied_internvl3_5": (qwen3_release(tied=False), None, "internvl2_5"),
    "internlm2_internvl2_8b": (internlm2_release(), {"rope_type": "dynamic", "factor": 2.0}, "internlm2-chat"),
    "phi3_su_internvl2_4b": (phi3_release(), {"rope_type": "longrope", "short_factor": PHI3_SHORT,
                                              "long_factor": PHI3_LONG, "original_max_position_embeddings": 32},
                             "phi3-chat"),
    "phi3_longrope": (phi3_release(rope_type="longrope"), {"rope_type": "longrope", "short_factor": PHI3_SHORT,
                                                            "long_factor": PHI3_LONG,
                                                            "original_max_position_embeddings": 32}, "phi3-chat"),
    "llama_yi_internvl2_40b": (llama_release(), None, "Hermes-2"),
    "llama3_internvl2_76b": (llama_release(rope_theta=5e5), None, "internlm2-chat"),
}
EXPECTED_CLASS = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "internlm2": "LlamaForCausalLM",
                  "phi3": "Phi3ForCausalLM", "llama": "LlamaForCausalLM"}


@pytest.mark.parametrize("name", list(RELEASES))
def test_release_llm_config_loads_and_round_trips(name, vision_state, tmp_path):
    release, rope, template = RELEASES[name]
    ref = reference_llm(release, rope)
    ours = load_release(tmp_path / "orig", vision_state, release, ref, template)
    assert type(ours.language_model).__name__ == EXPECTED_CLASS[release["model_type"]]
    assert ours.template == template
    for n in (SHORT, LONG):  # beyond the pretraining length too: the scaled rope must be the reference's
        assert (llm_logits(ours.language_model, n) - llm_logits(ref, n)).abs().max() <= 1e-5
    ours.save_pretrained(tmp_path / "ours")
    back = InternVLChatModel.from_pretrained(tmp_path / "ours")
    for n in (SHORT, LONG):
        assert torch.equal(llm_logits(back.language_model, n), llm_logits(ours.language_model, n))
    # tying (Qwen3 ships both): no lm_head on disk <-> one shared tensor, through load, save and load again
    tied = release["tie_word_embeddings"]
    saved = load_file(str(tmp_path / "ours" / "model.safetensors"))
    assert ("language_model.lm_head.weight" in saved) == (not tied)
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["llm_config"]["tie_word_embeddings"] == tied
    for model in (ours, back):
        head, emb = model.language_model.get_output_embeddings(), model.language_model.get_input_embeddings()
        assert (head.weight.data_ptr() == emb.weight.data_ptr()) == tied
        assert tied or not torch.equal(head.weight, emb.weight)


# ---------------------------------------------------------------------------------------------- training step
@pytest.mark.parametrize("name", list(RELEASES))
def test_training_step_loss_and_gradients_are_transformers(name, vision_state, tmp_path):
    """A training step applies the head only at trained positions (no logits): its loss is transformers' own
    causal-LM loss of the reference model, and so are the LLM's gradients (head and embeddings included)."""
    release, rope, template = RELEASES[name]
    ref = reference_llm(release, rope).train()
    ours = load_release(tmp_path / "orig", vision_state, release, ref, template).train()
    ours.img_context_token_id = 0  # not among the ids below: a text-only batch
    ids = torch.randint(3, 300, (2, SHORT), generator=torch.Generator().manual_seed(5))
    labels = ids.clone()
    labels[:, :9] = -100  # the prompt
    labels[1, 17:] = -100  # a shorter answer in the second row
    out = ours(input_ids=ids, labels=labels)
    assert out.logits is None
    out.loss.backward()
    expected = ref(input_ids=ids, labels=labels).loss
    expected.backward()
    assert abs(float(out.loss.detach()) - float(expected.detach())) <= 1e-5
    ours_grads = {n: p.grad for n, p in ours.language_model.named_parameters()}
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    assert set(ours_grads) == set(ref_grads)
    for n, g in ref_grads.items():
        torch.testing.assert_close(ours_grads[n], g, atol=1e-5, rtol=1e-4, msg=n)


# ---------------------------------------------------------------------------------------------- long context
def test_phi3_su_uses_long_factors_beyond_original_length(vision_state, tmp_path):
    """InternVL2-4B's ``su`` rope: short factors up to ``original_max_position_embeddings``, long ones beyond."""
    release, rope, template = RELEASES["phi3_su_internvl2_4b"]
    ref = reference_llm(release, rope)
    ours = load_release(tmp_path / "long", vision_state, release, ref, template)
    short_only = load_release(tmp_path / "short", vision_state, phi3_release(long_factor=PHI3_SHORT), ref, template)
    theta, dim = release["rope_theta"], release["hidden_size"] // release["num_attention_heads"]
    original = release["original_max_position_embeddings"]
    factor = release["max_position_embeddings"] / original
    assert math.isclose(rotary(ours).attention_scaling, math.sqrt(1 + math.log(factor) / math.log(original)),
                        rel_tol=1e-6)
    assert torch.equal(llm_logits(ours.language_model, SHORT), llm_logits(short_only.language_model, SHORT))
    expect_short = base_inv_freq(theta, dim) / torch.tensor(PHI3_SHORT, dtype=torch.float64)
    assert torch.allclose(rotary(ours).inv_freq.double(), expect_short, rtol=1e-6)
    long_logits = llm_logits(ours.language_model, LONG)
    expect_long = base_inv_freq(theta, dim) / torch.tensor(PHI3_LONG, dtype=torch.float64)
    assert torch.allclose(rotary(ours).inv_freq.double(), expect_long, rtol=1e-6)
    assert (long_logits - llm_logits(short_only.language_model, LONG)).abs().max() > 1e-3


def dynamic_ntk_inv_freq(theta: float, dim: int, factor: float, max_pos: int, seq_len: int) -> torch.Tensor:
    """Dynamic NTK (InternLM2's and Qwen2's): the base grows once the sequence passes ``max_position_embeddings``."""
    seq_len = max(seq_len, max_pos)
    return base_inv_freq(theta * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2)), dim)


LONG_CONTEXT = {  # name -> (release with scaling, same release unscaled, reference rope, length-dependent)
    "internlm2_dynamic": (internlm2_release(), internlm2_release(rope_scaling=None),
                          {"rope_type": "dynamic", "factor": 2.0}, True),
    "qwen2_dynamic": (qwen2_release(rope_scaling=QWEN2_DYNAMIC), qwen2_release(),
                      {"rope_type": "dynamic", "factor": 2.0}, True),
    # not in a release config: the legacy ``type`` form of linear scaling, and the Qwen3 model card's YaRN recipe
    "llama_linear": (llama_release(rope_scaling={"type": "linear", "factor": 2.0}), llama_release(),
                     {"rope_type": "linear", "factor": 2.0}, False),
    "qwen3_yarn": (qwen3_release(tied=False, rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                           "original_max_position_embeddings": 32}),
                   qwen3_release(tied=False), {"rope_type": "yarn", "factor": 4.0,
                                               "original_max_position_embeddings": 32}, False),
}


@pytest.mark.parametrize("name", list(LONG_CONTEXT))
def test_long_context_rope_scaling(name, vision_state, tmp_path):
    scaled, unscaled, rope, length_dependent = LONG_CONTEXT[name]
    ref = reference_llm(scaled, rope)
    ours = load_release(tmp_path / "scaled", vision_state, scaled, ref)
    plain = load_release(tmp_path / "plain", vision_state, unscaled, ref)
    short_ours, short_plain = llm_logits(ours.language_model, SHORT), llm_logits(plain.language_model, SHORT)
    long_ours, long_plain = llm_logits(ours.language_model, LONG), llm_logits(plain.language_model, LONG)
    assert (long_ours - long_plain).abs().max() > 1e-3
    if length_dependent:  # within the pretraining length the scaled model is the plain one
        assert torch.equal(short_ours, short_plain)
    theta = scaled["rope_theta"]
    dim = scaled.get("head_dim", scaled["hidden_size"] // scaled["num_attention_heads"])
    inv_freq, base = rotary(ours).inv_freq.double(), base_inv_freq(theta, dim)
    factor = rope["factor"]
    if rope["rope_type"] == "dynamic":
        expect = dynamic_ntk_inv_freq(theta, dim, factor, scaled["max_position_embeddings"], LONG)
        assert torch.allclose(inv_freq, expect, rtol=1e-5)
    elif rope["rope_type"] == "linear":
        assert torch.allclose(inv_freq, base / factor, rtol=1e-6)
    else:  # yarn: attention temperature 0.1 ln(s) + 1; the slowest dimension (< 1 turn in 32 tokens) interpolated
        assert math.isclose(rotary(ours).attention_scaling, 0.1 * math.log(factor) + 1, rel_tol=1e-6)
        assert torch.isclose(inv_freq[-1], base[-1] / factor, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- defaults, map
def test_su_without_original_length_takes_phi3_default(vision_state, tmp_path):
    """No ``original_max_position_embeddings``: Phi-3's config default (4096), as in InternVL's own Phi-3 code."""
    release = phi3_release(max_position_embeddings=16384)
    release.pop("original_max_position_embeddings")
    ours = load_release(tmp_path, vision_state, release, reference_llm(phi3_release(), None), "phi3-chat")
    assert ours.language_model.config.rope_parameters["original_max_position_embeddings"] == 4096
    assert math.isclose(rotary(ours).attention_scaling, math.sqrt(1 + math.log(4) / math.log(4096)), rel_tol=1e-6)


def test_field_map_leaves_input_and_other_families_alone():
    su = phi3_release()
    mapped = llm_config_for_transformers(su)
    assert su["rope_scaling"]["type"] == "su" and "attn_implementation" in su  # input unchanged
    assert mapped["rope_scaling"] == {"rope_type": "longrope", "short_factor": PHI3_SHORT, "long_factor": PHI3_LONG,
                                      "original_max_position_embeddings": 32}
    assert mapped["original_max_position_embeddings"] == 32 and "attn_implementation" not in mapped
    dyn = internlm2_release()
    assert llm_config_for_transformers(dyn)["rope_scaling"] == {"type": "dynamic", "factor": 2.0}


def test_resaved_release_with_top_level_dtype_reloads(vision_state, tmp_path):
    release, rope, template = RELEASES["qwen2_internvl2_1b"]
    path = write_checkpoint(tmp_path / "orig", vision_state, release, reference_llm(release, rope), template)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "torch_dtype": "bfloat16"}))
    InternVLChatModel.from_pretrained(path).save_pretrained(tmp_path / "saved")
    InternVLChatModel.from_pretrained(tmp_path / "saved")
