"""REFERENCE ONLY: a frozen copy of ``internvl.prompt.preprocess`` as it was before issue 10 (one tokenizer call
per piece, per role prefix, per template check, plus a re-tokenisation of the whole prompt: ~14 calls a sample).

``test_prompt_equivalence`` compares the optimised ``preprocess`` against this over generated conversations; keep
this file unchanged so that comparison keeps meaning something. Not used by the package.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from internvl.constants import (IGNORE_INDEX, IMAGE_PLACEHOLDER, IMG_CONTEXT_TOKEN, IMG_END_TOKEN,
                                IMG_START_TOKEN, RESERVED_IMAGE_TOKENS)
from internvl.conversation import ASSISTANT, USER, get_conv_template
from internvl.errors import (BAD_ROW, NO_TRAINED_TOKENS, PLACEHOLDER_MISMATCH, RESERVED_TOKEN,
                             TOKENIZATION_MISMATCH, TOO_LONG, DataError, TemplateError)
from internvl.prompt import expand_placeholders, split_conversation


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _bos_prefix(tokenizer) -> list[int]:
    plain = _encode(tokenizer, "a")
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for k in range(len(full) - len(plain) + 1):
        if full[k:k + len(plain)] == plain:
            return full[:k]
    return []


def _single_token_id(tokenizer, token: str, *, template: str, sample_ref: str, what: str) -> int:
    ids = _encode(tokenizer, token)
    if len(ids) != 1:
        raise TemplateError(
            f"{sample_ref}: {what} {token!r} of template {template!r} is not one special token of this tokenizer "
            f"(it encodes to {len(ids)} ids {ids[:8]}); the template does not match the tokenizer - use the "
            f"checkpoint's template (config.template) or a tokenizer that has {token!r} as a special token")
    return ids[0]


def reference_preprocess(template_name: str, conversations: Sequence[dict], tokenizer,
                         num_image_token_list: Sequence[int], *, sample_ref: str = "<sample>",
                         max_length: int | None = None, placeholder: str = IMAGE_PLACEHOLDER,
                         check_whole: bool = True) -> dict[str, Any]:
    conv = get_conv_template(template_name)
    end_id = _single_token_id(tokenizer, conv.end_token, template=template_name, sample_ref=sample_ref,
                              what="end token")
    img_end_id = _single_token_id(tokenizer, IMG_END_TOKEN, template=template_name, sample_ref=sample_ref,
                                  what="image token")
    for tok in (IMG_START_TOKEN, IMG_CONTEXT_TOKEN):
        _single_token_id(tokenizer, tok, template=template_name, sample_ref=sample_ref, what="image token")

    system, turns = split_conversation(conversations, sample_ref)
    if system is not None:
        conv.set_system_message(system)
    texts_to_check = ([system] if system is not None else []) + [t for _, t in turns]
    for text in texts_to_check:
        for tok in RESERVED_IMAGE_TOKENS:
            if tok in text:
                raise DataError(sample_ref, RESERVED_TOKEN, f"the annotation text contains {tok!r}, which only the "
                                                            f"image expansion may produce")
    if system is not None and placeholder in system:
        raise DataError(sample_ref, PLACEHOLDER_MISMATCH, f"{placeholder!r} in the system turn")
    n_placeholders = 0
    for who, text in turns:
        if who == ASSISTANT and not text.strip():
            raise DataError(sample_ref, BAD_ROW, "an assistant turn is empty: there is nothing to train on")
        if who == ASSISTANT and placeholder in text:
            raise DataError(sample_ref, PLACEHOLDER_MISMATCH, f"{placeholder!r} in an assistant turn")
        n_placeholders += text.count(placeholder)
    if n_placeholders != len(num_image_token_list):
        raise DataError(sample_ref, PLACEHOLDER_MISMATCH, f"{n_placeholders} {placeholder!r} placeholder(s) but "
                                                          f"{len(num_image_token_list)} media reference(s)")
    used = 0
    for who, text in turns:
        if who == USER:
            text, used = expand_placeholders(text, num_image_token_list, placeholder, used)
        conv.append_message(conv.roles[who], text)

    tail_ids = _encode(tokenizer, conv.sep_tail) if conv.sep_tail else []
    input_ids = _bos_prefix(tokenizer)
    labels = [IGNORE_INDEX] * len(input_ids)
    for kind, prefix, text, suffix in conv.message_pieces():
        ids = _encode(tokenizer, prefix + text + suffix)
        if kind != "assistant":
            input_ids += ids
            labels += [IGNORE_INDEX] * len(ids)
            continue
        prefix_ids = _encode(tokenizer, prefix)
        closing = [end_id] + tail_ids
        if ids[:len(prefix_ids)] != prefix_ids or ids[-len(closing):] != closing or len(ids) <= len(prefix_ids):
            raise DataError(sample_ref, TOKENIZATION_MISMATCH,
                            f"template {template_name!r}: the assistant message {text[:40]!r}... does not tokenise "
                            f"as role prefix + text + {conv.end_token!r} (a leading/trailing whitespace merging "
                            f"with the template's tokens?)")
        n_tail = len(tail_ids)
        input_ids += ids
        labels += ([IGNORE_INDEX] * len(prefix_ids) + ids[len(prefix_ids):len(ids) - n_tail]
                   + [IGNORE_INDEX] * n_tail)
    if check_whole:
        whole = _bos_prefix(tokenizer) + _encode(tokenizer, conv.get_prompt())
        if whole != input_ids:
            first = next((i for i, (a, b) in enumerate(zip(whole, input_ids)) if a != b),
                         min(len(whole), len(input_ids)))
            raise DataError(sample_ref, TOKENIZATION_MISMATCH,
                            f"template {template_name!r}: tokenising message by message differs from tokenising "
                            f"the whole prompt (first difference at token {first}); training would not see what "
                            f"inference sees")

    truncated = max_length is not None and len(input_ids) > max_length
    if truncated:
        img_ends = [i for i, t in enumerate(input_ids) if t == img_end_id]
        if img_ends and img_ends[-1] >= max_length:
            raise DataError(sample_ref, TOO_LONG,
                            f"{len(input_ids)} tokens; the image tokens end at {img_ends[-1] + 1} > max_length "
                            f"{max_length} (lower max_dynamic_patch or raise max_seq_length)")
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    num_trained = sum(1 for x in labels if x != IGNORE_INDEX)
    if num_trained == 0:
        raise DataError(sample_ref, NO_TRAINED_TOKENS,
                        f"no assistant token left to train ({len(input_ids)} tokens, max_length {max_length})")
    ids_t = torch.tensor(input_ids, dtype=torch.long)
    return {"input_ids": ids_t, "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.ones_like(ids_t), "num_trained": num_trained, "truncated": truncated}
