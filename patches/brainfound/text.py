"""Text encoders for the Brainfound stages, from transformers, offline.

``text_model`` in a stage config is either a local Hugging Face model directory (a BERT-like encoder and its
tokenizer, e.g. a downloaded Chinese BERT; loaded with ``local_files_only=True``, never ``trust_remote_code``) or
``"tiny"``: a small randomly initialised (seeded) ``BertModel`` plus a WordPiece tokenizer whose vocabulary is
built deterministically from the run's own text (reports, prompts), here, without any hub access. The tiny model is saved into the run
directory as ``text_model_init-<hash>`` (``save_pretrained``, safetensors; the hash covers the builder version,
the corpus and every size parameter), so resumed runs reuse exactly the same one and a changed corpus or size builds a new one.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, BertTokenizerFast

from internvl.fileio import atomic_directory

logger = logging.getLogger(__name__)

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY_BUILDER_VERSION = 2  # part of the tiny model's cache key: bump when build_tiny_text_model changes


def tiny_wordpiece_vocab(texts: list[str], vocab_size: int) -> list[str]:
    """A deterministic WordPiece vocabulary: specials, every character (and its ``##`` continuation), then whole
    words by falling frequency (ties alphabetical) up to ``vocab_size``. (The ``tokenizers`` trainer breaks
    frequency ties in hash order, so the same corpus could give different ids from run to run.)"""
    from collections import Counter

    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for text in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    chars = sorted({c for w in counts for c in w})
    vocab = SPECIAL + chars + [f"##{c}" for c in chars]
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1]
    return vocab + words[:max(0, vocab_size - len(vocab))]


def build_tiny_text_model(corpus: Iterable[str], out_dir: str | os.PathLike, *, hidden_size: int = 64,
                          num_layers: int = 2, num_heads: int = 2, vocab_size: int = 2000, max_length: int = 64,
                          seed: int = 0, dropout: float = 0.0) -> Path:
    """A WordPiece tokenizer over ``corpus`` and a seeded random tiny BERT, saved to ``out_dir`` (atomically).
    The same corpus and sizes give the same files."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    texts = [t for t in corpus if t and t.strip()]
    if not texts:
        raise ValueError("build_tiny_text_model: empty corpus")
    vocab = tiny_wordpiece_vocab(texts, vocab_size)
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece()
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_length)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=num_layers,
                     num_attention_heads=num_heads, intermediate_size=hidden_size * 4,
                     max_position_embeddings=max(max_length, 64), hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(cfg, add_pooling_layer=False)
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        fast.save_pretrained(tmp)
    return Path(out_dir)


def resolve_text_model(spec: str, run_dir: str | os.PathLike, corpus_fn, **tiny_kwargs) -> Path:
    """``spec`` = a local model dir, or "tiny" (built once into ``run_dir/text_model_init`` from ``corpus_fn()``)."""
    if spec != "tiny":
        path = Path(spec)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"text_model {spec!r}: not a local model directory (no config.json); "
                                    f"use 'tiny' or a downloaded encoder directory")
        return path
    import hashlib
    import json

    corpus = list(corpus_fn())
    key = hashlib.sha256(json.dumps([TINY_BUILDER_VERSION, corpus, sorted(tiny_kwargs.items())]).encode()
                         ).hexdigest()[:12]
    out = Path(run_dir) / f"text_model_init-{key}"  # keyed by the corpus and every size parameter
    if (out / "config.json").is_file():
        return out
    logger.info("building a tiny random BERT + WordPiece tokenizer in %s", out)
    return build_tiny_text_model(corpus, out, **tiny_kwargs)


def load_text_model(path: str | os.PathLike):
    """(tokenizer, model) from a local directory; no network, no remote code."""
    from transformers import AutoConfig

    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
    extra = {"add_pooling_layer": False} if cfg.model_type == "bert" else {}
    model = AutoModel.from_pretrained(str(path), local_files_only=True, **extra)
    if getattr(model, "pooler", None) is not None:  # sentence features are mean-pooled; an unused pooler
        model.pooler = None                         # would leave DDP with parameters that get no gradient
    return tok, model


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
