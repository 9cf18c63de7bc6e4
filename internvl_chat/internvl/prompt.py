"""Conversation -> ``input_ids`` / ``labels`` / ``attention_mask`` with loss on assistant text only.

One function serves every template (``internvl.conversation``): the rendered prompt is cut into pieces (system,
then one per message, exactly the strings ``Conversation.get_prompt()`` joins) and each piece is tokenised on
its own, InternVL 2.5's method. What is trained is the same set for every template: the assistant text and the
template's end token (``<|im_end|>``/``<|end|>``); role prefixes, the system prompt, user turns and the newline
after the end token (internvl2_5) are ``IGNORE_INDEX``. A tokenizer that adds a BOS gets it prepended, untrained.

Images: each placeholder (``<image>``, or the one a media reader declares) becomes
``<img>`` + ``<IMG_CONTEXT>`` x N + ``</img>`` on the string before tokenisation, N taken from
``num_image_token_list`` in order.

Nothing is masked silently (InternVL masks a whole sample on a "tokenization mismatch"). Instead:

* ``TemplateError``: the template's end token is not one special token of the tokenizer, or the image tokens
  are not single tokens (wrong ``template`` for this checkpoint).
* ``DataError(TOKENIZATION_MISMATCH)``: a piece does not start with its role prefix's ids, does not end with the
  end token's ids, or the pieces' concatenation differs from tokenising the whole prompt (e.g. an answer that
  starts with a newline that merges with the role prefix's newline).
* ``DataError(TOO_LONG)``: the image spans do not fit ``max_length`` (text is truncated, an ``<img>`` span never).
  A sample whose text was truncated says so (``truncated``); the dataset counts and logs those, ``check_data``
  lists them.
* ``DataError(BAD_ROW)``: an empty assistant turn (nothing to train).
* ``DataError(NO_TRAINED_TOKENS)``: nothing left to train after truncation.
* ``DataError(PLACEHOLDER_MISMATCH / BAD_ROW / RESERVED_TOKEN)``: malformed conversations.

Grounding text (``<ref>..</ref><box>[[x1, y1, x2, y2]]</box>``, 0-1000 coordinates) is ordinary text here.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from internvl.conversation import ASSISTANT, USER, get_conv_template
from internvl.constants import (IGNORE_INDEX, IMAGE_PLACEHOLDER, IMG_CONTEXT_TOKEN, IMG_END_TOKEN,
                                      IMG_START_TOKEN, RESERVED_IMAGE_TOKENS)
from internvl.errors import (BAD_ROW, NO_TRAINED_TOKENS, PLACEHOLDER_MISMATCH, RESERVED_TOKEN,
                                   TOKENIZATION_MISMATCH, TOO_LONG, DataError, TemplateError)

USER_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")
SYSTEM_ROLES = ("system",)


def image_token_string(n_tokens: int) -> str:
    """What one placeholder expands to: ``<img>`` + ``<IMG_CONTEXT>`` x ``n_tokens`` + ``</img>``."""
    return IMG_START_TOKEN + IMG_CONTEXT_TOKEN * int(n_tokens) + IMG_END_TOKEN


def expand_placeholders(text: str, num_image_token_list: Sequence[int], placeholder: str = IMAGE_PLACEHOLDER,
                        start: int = 0) -> tuple[str, int]:
    """Replace each ``placeholder`` in ``text`` with the image tokens of entries ``start, start+1, ...``.

    Returns the new text and the index of the next unused entry.
    """
    parts = text.split(placeholder)
    out = [parts[0]]
    for part in parts[1:]:
        out.append(image_token_string(num_image_token_list[start]))
        out.append(part)
        start += 1
    return "".join(out), start


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _bos_prefix(tokenizer) -> list[int]:
    """Ids the tokenizer prepends on its own (a BOS for Llama/InternLM2 tokenizers; none for Qwen2)."""
    plain = _encode(tokenizer, "a")
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for k in range(len(full) - len(plain) + 1):
        if full[k:k + len(plain)] == plain:
            return full[:k]
    return []


def single_token_id(tokenizer, token: str, *, template: str, sample_ref: str, what: str) -> int:
    """The id of ``token`` if the tokenizer encodes it as exactly one token, else ``TemplateError``."""
    ids = _encode(tokenizer, token)
    if len(ids) != 1:
        raise TemplateError(
            f"{sample_ref}: {what} {token!r} of template {template!r} is not one special token of this tokenizer "
            f"(it encodes to {len(ids)} ids {ids[:8]}); the template does not match the tokenizer - use the "
            f"checkpoint's template (config.template) or a tokenizer that has {token!r} as a special token")
    return ids[0]


def check_template(template_name: str, tokenizer, sample_ref: str = "<template check>") -> None:
    """Raise ``TemplateError`` unless the template's end token and the image tokens are single tokens."""
    conv = get_conv_template(template_name)
    single_token_id(tokenizer, conv.end_token, template=template_name, sample_ref=sample_ref, what="end token")
    for tok in RESERVED_IMAGE_TOKENS:
        single_token_id(tokenizer, tok, template=template_name, sample_ref=sample_ref, what="image token")


def split_conversation(conversations: Sequence[dict], sample_ref: str) -> tuple[str | None, list[tuple[int, str]]]:
    """Validate a ``[{"from", "value"}, ...]`` list; return (system message or None, [(USER|ASSISTANT, text)])."""
    if not isinstance(conversations, (list, tuple)) or not conversations:
        raise DataError(sample_ref, BAD_ROW, "'conversations' must be a non-empty list")
    system, turns = None, []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataError(sample_ref, BAD_ROW, f"turn {i} must be an object with 'from' and 'value'")
        role, value = turn["from"], turn["value"]
        if not isinstance(value, str):
            raise DataError(sample_ref, BAD_ROW, f"turn {i} value must be a string, got {type(value).__name__}")
        if role in SYSTEM_ROLES:
            if i != 0:
                raise DataError(sample_ref, BAD_ROW, f"a system turn must come first (found at turn {i})")
            system = value
            continue
        if role in USER_ROLES:
            who = USER
        elif role in ASSISTANT_ROLES:
            who = ASSISTANT
        else:
            raise DataError(sample_ref, BAD_ROW, f"turn {i} has unknown role {role!r} "
                                                 f"(expected one of {USER_ROLES + ASSISTANT_ROLES + SYSTEM_ROLES})")
        expected = USER if len(turns) % 2 == 0 else ASSISTANT
        if who != expected:
            raise DataError(sample_ref, BAD_ROW, f"turn {i} ({role!r}) breaks the user/assistant alternation "
                                                 f"(conversations must start with a user turn and alternate)")
        turns.append((who, value))
    if not any(who == ASSISTANT for who, _ in turns):
        raise DataError(sample_ref, NO_TRAINED_TOKENS, "the conversation has no assistant turn")
    return system, turns


def preprocess(template_name: str, conversations: Sequence[dict], tokenizer, num_image_token_list: Sequence[int],
               *, sample_ref: str = "<sample>", max_length: int | None = None,
               placeholder: str = IMAGE_PLACEHOLDER, check_whole: bool = True) -> dict[str, Any]:
    """Tokenise one conversation and build its labels (see the module docstring for the rules).

    Args:
        template_name: a registered conversation template (``Hermes-2``, ``internvl2_5``, ...).
        conversations: ``[{"from": "system"|"human"|"gpt", "value": str}, ...]``; a leading system turn replaces
            the template's system message. ``"user"``/``"assistant"`` are accepted as role names too.
        tokenizer: a Hugging Face tokenizer that has the template's tokens and ``<img>``/``</img>``/``<IMG_CONTEXT>``.
        num_image_token_list: ``<IMG_CONTEXT>`` count for each placeholder, in order of appearance; its length
            must equal the number of placeholders in the user turns.
        sample_ref: how errors name the sample (``"file.jsonl:17"``).
        max_length: truncate the text tail to this many tokens (never through an image span); None: no limit.
        placeholder: the placeholder string the media of this sample fill.
        check_whole: also tokenise the whole prompt and require it to equal the concatenated pieces.

    Returns:
        ``{"input_ids", "labels", "attention_mask"}`` (1-D LongTensors of one length) and ``"num_trained"`` (int).
    """
    conv = get_conv_template(template_name)
    end_id = single_token_id(tokenizer, conv.end_token, template=template_name, sample_ref=sample_ref,
                             what="end token")
    img_end_id = single_token_id(tokenizer, IMG_END_TOKEN, template=template_name, sample_ref=sample_ref,
                                 what="image token")
    for tok in (IMG_START_TOKEN, IMG_CONTEXT_TOKEN):
        single_token_id(tokenizer, tok, template=template_name, sample_ref=sample_ref, what="image token")

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


def generation_prompt(template_name: str, question: str, num_image_token_list: Sequence[int], *,
                      history: Sequence[tuple[str, str]] = (), system: str | None = None,
                      placeholder: str = IMAGE_PLACEHOLDER) -> str:
    """The prompt string that cues the model's reply to ``question`` after ``history``; placeholders in the user
    turns (history first) expanded with ``num_image_token_list`` in order. Renders exactly what ``preprocess``
    trains on up to the reply, so the ids ``encode_generation_prompt`` returns are a prefix of the training ids."""
    conv = get_conv_template(template_name)
    if system is not None:
        conv.set_system_message(system)
    n_placeholders = sum(q.count(placeholder) for q, _ in history) + question.count(placeholder)
    if n_placeholders != len(num_image_token_list):
        raise ValueError(f"the prompt has {n_placeholders} {placeholder!r} placeholder(s) for "
                         f"{len(num_image_token_list)} media reference(s)")
    used = 0
    for old_q, old_a in history:
        text, used = expand_placeholders(old_q, num_image_token_list, placeholder, used)
        conv.append_message(conv.roles[USER], text)
        conv.append_message(conv.roles[ASSISTANT], old_a)
    text, used = expand_placeholders(question, num_image_token_list, placeholder, used)
    conv.append_message(conv.roles[USER], text)
    conv.append_message(conv.roles[ASSISTANT], None)
    return conv.get_prompt()


def encode_generation_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a generation prompt: the tokenizer's own BOS (if it adds one) + the prompt's ids."""
    return _bos_prefix(tokenizer) + _encode(tokenizer, prompt)


__all__ = ["check_template", "encode_generation_prompt", "expand_placeholders", "generation_prompt",
           "image_token_string", "preprocess", "single_token_id", "split_conversation"]
