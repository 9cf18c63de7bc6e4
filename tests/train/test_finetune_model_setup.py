"""How the finetune entry point prepares the model: config overrides from the CLI, special tokens (embedding rows =
mean of the old ones), ``img_context_token_id``, ``use_cache``, attention backend, geometry checks and swapping
the vision side of a loaded checkpoint."""
from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from internvl.constants import IMG_CONTEXT_TOKEN, SPECIAL_TOKENS
from internvl.train.internvl_chat_finetune import add_special_tokens, load_model, parse_args


def _args(model_dir, tmp_path, *extra):
    return parse_args(["--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path), *extra])


def test_cli_overrides_reach_the_config(tiny_model_dir, tmp_path):
    model_args, data_args, training_args, _ = _args(
        tiny_model_dir, tmp_path, "--conv_style", "Hermes-2", "--max_dynamic_patch", "3", "--use_thumbnail", "True",
        "--dynamic_image_size", "True", "--drop_path_rate", "0.1")
    model = load_model(model_args, data_args, training_args)
    cfg = model.config
    assert (cfg.template, cfg.max_dynamic_patch) == ("Hermes-2", 3)
    assert cfg.use_thumbnail is True and cfg.dynamic_image_size is True
    assert cfg.vision_config.drop_path_rate == pytest.approx(0.1)
    assert model.language_model.config.use_cache is False
    assert model.language_model.config._attn_implementation == "sdpa"  # no flash-attn / CUDA here


def test_geometry_mismatch_is_an_error(tiny_model_dir, tmp_path):
    for flags, match in ((["--force_image_size", "448"], "force_image_size 448 differs"),
                         (["--down_sample_ratio", "0.25"], "down_sample_ratio 0.25 differs")):
        model_args, data_args, training_args, _ = _args(tiny_model_dir, tmp_path, *flags)
        with pytest.raises(ValueError, match=match):
            load_model(model_args, data_args, training_args)


def test_missing_special_tokens_are_added_with_mean_rows(tiny_model_dir, tmp_path):
    model_args, data_args, training_args, _ = _args(tiny_model_dir, tmp_path)
    model = load_model(model_args, data_args, training_args)
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(["a small corpus without the image tokens"] * 4, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    old_len = len(tokenizer)
    model.language_model.resize_token_embeddings(old_len, mean_resizing=False)
    assert add_special_tokens(tokenizer, model) == len(SPECIAL_TOKENS)
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert ids == list(range(old_len, old_len + len(SPECIAL_TOKENS)))  # InternVL's order
    for emb in (model.language_model.get_input_embeddings(), model.language_model.get_output_embeddings()):
        assert emb.weight.shape[0] == old_len + len(SPECIAL_TOKENS)
        mean = emb.weight[:old_len].mean(dim=0)
        assert torch.allclose(emb.weight[ids], mean.expand(len(ids), -1))
    assert add_special_tokens(tokenizer, model) == 0  # idempotent


def test_tiny_tokenizer_has_every_special_token(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    vocab = tokenizer.get_vocab()
    assert all(t in vocab for t in SPECIAL_TOKENS) and vocab[IMG_CONTEXT_TOKEN] != tokenizer.unk_token_id


def test_vision_swap_keeps_the_llm(tiny_model_dir, tmp_path):
    overrides = '{"image_size": 56, "patch_size": 14, "hidden_size": 32, "num_hidden_layers": 1, ' \
                '"num_attention_heads": 2, "intermediate_size": 64}'
    model_args, data_args, training_args, _ = _args(tiny_model_dir, tmp_path, "--vision_model", "intern_vit",
                                                    "--vision_overrides", overrides, "--projector", "mlp1")
    model = load_model(model_args, data_args, training_args)
    base_args = _args(tiny_model_dir, tmp_path)
    original = load_model(*base_args[:3])
    assert model.config.vision_config.hidden_size == 32 and model.config.image_size == 56
    assert model.mlp1[1].in_features == 32 * 4  # pixel shuffle 0.5: 4x the channels
    for key, value in original.language_model.state_dict().items():
        assert torch.equal(model.language_model.state_dict()[key], value), key
    tiles = torch.randn(2, 3, 56, 56)
    assert model.extract_feature(tiles).shape == (2, model.config.num_image_token, 128)
