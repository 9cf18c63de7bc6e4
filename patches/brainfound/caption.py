"""Brainfound stage-2 captioning decoder: a BERT decoder that writes the report from the fused scan tokens.

The decoder is transformers' ``BertLMHeadModel`` (``is_decoder=True``, ``add_cross_attention=True``) in the text
encoder's size (vocabulary, width, heads, feed-forward; ``decoder_layers`` layers, default the encoder's). Its
cross-attention reads the scan tokens (the slice-fusion transformer's outputs, [CLS] + one per slice, projected to
the text width by ``scan_proj`` in ``clip_model``). Training is teacher forcing with the LM loss (next token,
padding ignored); the report starts with the tokenizer's [CLS] (the BOS) and ends with [SEP] (the EOS).

Tying (``tie_decoder``): the word embeddings are always the text encoder's (one tensor; the LM head's output matrix
is tied to them as BERT does). With ``full=True`` (Brainfound's ``--tie_text_encoder_decoder true``) every decoder
weight that has a counterpart in the text encoder *is* that tensor (position / type embeddings, and per layer the
self-attention, feed-forward and layer norms); only the cross-attention and the LM head's transform stay the
decoder's own. Sharing is by ``nn.Parameter`` object, so ``data_ptr`` matches and one optimizer step moves both.

Decoding (``generate_reports``): transformers' ``generate`` with the scan tokens as ``encoder_hidden_states``
(beam search for ``beam_size > 1``, greedy for 1; sequence score = sum of token log-probabilities, no length
penalty), ``decode_max_length`` tokens at most including BOS / EOS, and ``NoImmediateRepeat`` banning a token
right after itself. ``sequence_log_prob`` scores a decoded sequence the same way (tests, diagnostics).
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import (BertConfig, BertLMHeadModel, DynamicCache, EncoderDecoderCache, LogitsProcessor,
                          LogitsProcessorList)

_SHARED_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_attention_heads", "intermediate_size", "hidden_act",
                       "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id")


def build_decoder(text_model: nn.Module, layers: int | None = None, dropout: float = 0.0) -> BertLMHeadModel:
    """A ``BertLMHeadModel`` decoder sized like ``text_model`` (a BERT-like encoder), cross-attention on."""
    tcfg = text_model.config
    missing = [k for k in _SHARED_CONFIG_KEYS if not hasattr(tcfg, k)]
    if missing:
        raise ValueError(f"the captioning decoder needs a BERT-like text encoder; its config lacks {missing}")
    kwargs = {k: getattr(tcfg, k) for k in _SHARED_CONFIG_KEYS}
    cfg = BertConfig(**kwargs, num_hidden_layers=int(layers or tcfg.num_hidden_layers), is_decoder=True,
                     add_cross_attention=True, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                     tie_word_embeddings=True)
    return BertLMHeadModel(cfg)


def _share(dst_module: nn.Module, src_module: nn.Module) -> int:
    """Make every parameter of ``dst_module`` the same ``nn.Parameter`` as ``src_module``'s of that name."""
    src = dict(src_module.named_parameters())
    n = 0
    for name, _ in list(dst_module.named_parameters()):
        if name not in src:
            raise ValueError(f"cannot tie {name!r}: the text encoder has no such weight")
        owner_path, _, leaf = name.rpartition(".")
        owner = dst_module.get_submodule(owner_path) if owner_path else dst_module
        if tuple(getattr(owner, leaf).shape) != tuple(src[name].shape):
            raise ValueError(f"cannot tie {name!r}: shapes {tuple(getattr(owner, leaf).shape)} vs "
                             f"{tuple(src[name].shape)}")
        setattr(owner, leaf, src[name])
        n += 1
    return n


def tie_decoder(decoder: BertLMHeadModel, text_model: nn.Module, full: bool) -> int:
    """Share the text encoder's tensors with ``decoder`` (see the module docstring); returns how many."""
    text = text_model.get_base_model() if hasattr(text_model, "get_base_model") else text_model
    emb = decoder.bert.embeddings
    if not full:
        emb.word_embeddings.weight = text.embeddings.word_embeddings.weight
        decoder.cls.predictions.decoder.weight = emb.word_embeddings.weight
        return 1
    n_text, n_dec = len(text.encoder.layer), len(decoder.bert.encoder.layer)
    if n_text != n_dec:
        raise ValueError(f"--tie_text_encoder_decoder true needs as many decoder layers as the text encoder has "
                         f"({n_text}); the decoder has {n_dec}")
    n = _share(emb, text.embeddings)
    for dec_layer, enc_layer in zip(decoder.bert.encoder.layer, text.encoder.layer):
        n += _share(dec_layer.attention, enc_layer.attention)
        n += _share(dec_layer.intermediate, enc_layer.intermediate)
        n += _share(dec_layer.output, enc_layer.output)
    decoder.cls.predictions.decoder.weight = emb.word_embeddings.weight
    return n


class NoImmediateRepeat(LogitsProcessor):
    """Bans, at every step, the token that was just produced (no ``a a`` in a generated report)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores.scatter(1, input_ids[:, -1:], float("-inf"))


def caption_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """LM labels: the tokens themselves (the model shifts them), padding ignored (-100)."""
    return input_ids.masked_fill(attention_mask == 0, -100)


@torch.no_grad()
def generate_reports(decoder: BertLMHeadModel, scan_tokens: torch.Tensor, *, bos_id: int, eos_id: int, pad_id: int,
                     beam_size: int = 3, max_length: int = 40) -> torch.Tensor:
    """Token ids ``[B, <= max_length]`` (BOS first; EOS then padding after it) decoded from ``scan_tokens``."""
    if beam_size < 1 or max_length < 2:
        raise ValueError(f"beam_size must be >= 1 and decode_max_length >= 2 (got {beam_size}, {max_length})")
    b = scan_tokens.shape[0]
    start = torch.full((b, 1), bos_id, dtype=torch.long, device=scan_tokens.device)
    extra = {"num_beams": beam_size, "length_penalty": 0.0, "early_stopping": True} if beam_size > 1 else {}
    return decoder.generate(input_ids=start, attention_mask=torch.ones_like(start),
                            encoder_hidden_states=scan_tokens,
                            encoder_attention_mask=torch.ones(scan_tokens.shape[:2], dtype=torch.long,
                                                              device=scan_tokens.device),
                            past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()),
                            logits_processor=LogitsProcessorList([NoImmediateRepeat()]), do_sample=False,
                            max_length=max_length, eos_token_id=eos_id, pad_token_id=pad_id, **extra)


@torch.no_grad()
def sequence_log_prob(decoder: BertLMHeadModel, scan_tokens: torch.Tensor, ids: torch.Tensor, eos_id: int
                      ) -> torch.Tensor:
    """Sum of log p(token | prefix, scan) over each sequence's tokens after BOS, up to and including its EOS."""
    logp = torch.log_softmax(decoder(input_ids=ids, encoder_hidden_states=scan_tokens).logits.float(), -1)
    tok = ids[:, 1:]
    step = logp[:, :-1].gather(-1, tok.unsqueeze(-1)).squeeze(-1)
    is_eos = (tok == eos_id).long()
    keep = (is_eos.cumsum(1) - is_eos) == 0  # tokens up to and including the first EOS
    return (step * keep).sum(1)


def decode_text(tok, ids: torch.Tensor) -> list[str]:
    return [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
