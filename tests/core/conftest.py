"""Fixtures for the core data-pipeline tests: the tiny model's tokenizer and config, and in-test tokenizers for
what the tiny one lacks (phi3's tokens, a BOS, BPE merges across newlines). Helpers: ``core_data_helpers``."""
from __future__ import annotations

import pytest

from core_data_helpers import INTERNVL_SPECIALS, make_bpe_tokenizer


@pytest.fixture(scope="session")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def chat_config(tiny_model_dir):
    from internvl.model.internvl_chat.configuration_internvl_chat import InternVLChatConfig

    return InternVLChatConfig.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def phi3_tok():
    return make_bpe_tokenizer(["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
                              + INTERNVL_SPECIALS)


@pytest.fixture(scope="session")
def bos_tok():
    return make_bpe_tokenizer(["<s>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"] + INTERNVL_SPECIALS, bos="<s>",
                              pad="<|endoftext|>")


@pytest.fixture(scope="session")
def merging_tok():
    return make_bpe_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + INTERNVL_SPECIALS,
                              merge_whitespace=True)
