"""Conversation -> ``input_ids`` / ``labels`` / ``attention_mask`` with loss on assistant text only.

One function serves every template (``internvl.conversation``): the rendered prompt is cut into pieces (system,
then one per message, exactly the strings ``Conversation.get_prompt()`` joins) and each piece is tokenised on
its own, InternVL 2.5's method. What is trained is the same set for every template: the assistant text and the
template's end token (``<|im_end|>``/``<|end|>``); role prefixes, the system prompt, user turns and the newline
after the end token (internvl2_5) are ``IGNORE_INDEX``. A tokenizer that adds a BOS gets it prepended, untrained.

Images: each placeholder (``<image>``, or the one a media reader declares) becomes
``<img>`` + ``<IMG_CONTEXT>`` x N + ``</img>`` on the string before tokenisation, N taken from
``num_image_token_list`` in order.

Cost (issue 10): one tokenizer call per sample. The pieces and the whole prompt (for the check below) go to the
tokenizer as one batch; what depends only on the (tokenizer, template) pair -- the single-token checks, the role
prefix and end-token ids, the BOS -- is derived once and cached (``template_tokens``); and each image is tokenised
as one ``<IMG_CONTEXT>`` whose id is then repeated N times, after checking once per tokenizer that a run of
context tokens tokenises as that many ids. The ids, labels and errors are those of tokenising every piece and the
whole prompt on its own (``tests/core/test_prompt_equivalence.py`` compares against a frozen copy of that).

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

import weakref
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from internvl.conversation import ASSISTANT, USER, Conversation, get_conv_template
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


def _encode_many(tokenizer, texts: list[str]) -> list[list[int]]:
    """``[_encode(t) for t in texts]`` in one tokenizer call (the same ids: a single call is a batch of one)."""
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _cache_slot(cache: "weakref.WeakKeyDictionary", tokenizer) -> dict | None:
    """The per-tokenizer dict of ``cache`` (None for a tokenizer that cannot be a weak key: nothing is cached)."""
    try:
        return cache.setdefault(tokenizer, {})
    except TypeError:
        return None


_BOS_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _bos_prefix(tokenizer) -> list[int]:
    """Ids the tokenizer prepends on its own (a BOS for Llama/InternLM2 tokenizers; none for Qwen2).

    Cached per tokenizer (and vocabulary size, so adding tokens re-derives it)."""
    slot = _cache_slot(_BOS_CACHE, tokenizer)
    key = len(tokenizer)
    if slot is not None and key in slot:
        return list(slot[key])
    plain = _encode(tokenizer, "a")
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    bos: list[int] = []
    for k in range(len(full) - len(plain) + 1):
        if full[k:k + len(plain)] == plain:
            bos = full[:k]
            break
    if slot is not None:
        slot[key] = tuple(bos)
    return bos


def _template_error(token: str, ids: list[int], *, template: str, sample_ref: str, what: str) -> TemplateError:
    return TemplateError(
        f"{sample_ref}: {what} {token!r} of template {template!r} is not one special token of this tokenizer "
        f"(it encodes to {len(ids)} ids {ids[:8]}); the template does not match the tokenizer - use the "
        f"checkpoint's template (config.template) or a tokenizer that has {token!r} as a special token")


def single_token_id(tokenizer, token: str, *, template: str, sample_ref: str, what: str) -> int:
    """The id of ``token`` if the tokenizer encodes it as exactly one token, else ``TemplateError``."""
    ids = _encode(tokenizer, token)
    if len(ids) != 1:
        raise _template_error(token, ids, template=template, sample_ref=sample_ref, what=what)
    return ids[0]


@dataclass(frozen=True)
class TemplateTokens:
    """What one (tokenizer, template) pair needs per sample, derived and checked once (``template_tokens``).

    ``compress_images``: a run of ``<IMG_CONTEXT>`` encodes to that many ``<IMG_CONTEXT>`` ids in every probed
    context, so ``preprocess`` tokenises one context token per image and repeats its id afterwards (the ids are
    the same; tokenising hundreds of context tokens per image is what it saves).
    """

    end_id: int
    img_end_id: int
    context_id: int
    tail_ids: tuple[int, ...]             # sep after the end token ("\n" for internvl2_5)
    assistant_prefix_ids: tuple[int, ...]  # the assistant role prefix, tokenised alone
    compress_images: bool
    system_ids: dict = field(default_factory=dict, compare=False)  # system piece text -> its ids (bounded)


_TEMPLATE_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_SYSTEM_CACHE_SIZE = 256  # distinct system prompts remembered per (tokenizer, template)
# contexts in which a run of context tokens must tokenise as the run (checked once per tokenizer)
_RUN_PROBES = ("x{run}y", "{run}", "a\n{run}{run}\nb", " {run} ", "<image>{run}\n")


def _expand_runs(ids: list[int], context_id: int, counts: Sequence[int]) -> list[int] | None:
    """Each ``context_id`` in ``ids`` repeated ``counts[i]`` times, in order; None unless there are exactly
    ``len(counts)`` of them."""
    if len(counts) == 0:
        return ids if context_id not in ids else None
    out: list[int] = []
    start, k = 0, 0
    for i, t in enumerate(ids):
        if t == context_id:
            if k == len(counts):
                return None
            out += ids[start:i]
            out += [context_id] * int(counts[k])
            start, k = i + 1, k + 1
    if k != len(counts):
        return None
    out += ids[start:]
    return out


def template_tokens(template_name: str, tokenizer, sample_ref: str = "<template check>", *,
                    conv: Conversation | None = None) -> TemplateTokens:
    """Check that ``template_name`` fits ``tokenizer`` (``TemplateError`` naming ``sample_ref`` if not: the end
    token and the image tokens must be single tokens) and return the ids ``preprocess`` needs.

    Cached per tokenizer, template and vocabulary size; a failing check is not cached (it raises again, naming
    the next sample). ``conv``: a fresh ``get_conv_template(template_name)`` the caller already made.
    """
    conv = conv if conv is not None else get_conv_template(template_name)
    key = (template_name, conv.end_token, conv.sep, conv.roles, len(tokenizer))
    slot = _cache_slot(_TEMPLATE_CACHE, tokenizer)
    if slot is not None and key in slot:
        return slot[key]
    singles = [(conv.end_token, "end token"), (IMG_END_TOKEN, "image token"), (IMG_START_TOKEN, "image token"),
               (IMG_CONTEXT_TOKEN, "image token")]
    run1 = image_token_string(1)
    run3 = image_token_string(3)
    probes = [p.format(run=run1) for p in _RUN_PROBES] + [p.format(run=run3) for p in _RUN_PROBES]
    encoded = _encode_many(tokenizer, [tok for tok, _ in singles] + [conv.sep_tail or "", conv.roles[ASSISTANT]]
                           + probes)
    ids_of = {}
    for (tok, what), ids in zip(singles, encoded):
        if len(ids) != 1:
            raise _template_error(tok, ids, template=template_name, sample_ref=sample_ref, what=what)
        ids_of[tok] = ids[0]
    tail_ids, prefix_ids = encoded[len(singles)], encoded[len(singles) + 1]
    probed = encoded[len(singles) + 2:]
    ctx = ids_of[IMG_CONTEXT_TOKEN]
    compress = all(_expand_runs(one, ctx, [3] * p.count("{run}")) == three
                   for one, three, p in zip(probed[:len(_RUN_PROBES)], probed[len(_RUN_PROBES):], _RUN_PROBES))
    out = TemplateTokens(end_id=ids_of[conv.end_token], img_end_id=ids_of[IMG_END_TOKEN], context_id=ctx,
                         tail_ids=tuple(tail_ids if conv.sep_tail else ()), assistant_prefix_ids=tuple(prefix_ids),
                         compress_images=compress)
    if slot is not None:
        slot[key] = out
    return out


def check_template(template_name: str, tokenizer, sample_ref: str = "<template check>") -> None:
    """Raise ``TemplateError`` unless the template's end token and the image tokens are single tokens (cached:
    the dataset calls this once per file, ``preprocess`` on every sample)."""
    try:
        template_tokens(template_name, tokenizer, sample_ref)
    except TemplateError:  # name the first failing token in this function's documented order
        conv = get_conv_template(template_name)
        single_token_id(tokenizer, conv.end_token, template=template_name, sample_ref=sample_ref, what="end token")
        for tok in RESERVED_IMAGE_TOKENS:
            single_token_id(tokenizer, tok, template=template_name, sample_ref=sample_ref, what="image token")
        raise


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
        ``{"input_ids", "labels", "attention_mask"}`` (1-D LongTensors of one length), ``"num_trained"`` (int) and
        ``"truncated"`` (bool).
    """
    conv = get_conv_template(template_name)
    tt = template_tokens(template_name, tokenizer, sample_ref, conv=conv)

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
    pieces, encoded = _encode_pieces(conv, turns, tokenizer, tt, num_image_token_list, placeholder, check_whole)

    bos = _bos_prefix(tokenizer)
    input_ids, labels = list(bos), [IGNORE_INDEX] * len(bos)
    prefix_ids = list(tt.assistant_prefix_ids)
    closing = [tt.end_id, *tt.tail_ids]
    n_prefix, n_tail = len(prefix_ids), len(tt.tail_ids)
    for (kind, _, text, _), ids in zip(pieces, encoded):
        if kind != "assistant":
            input_ids += ids
            labels += [IGNORE_INDEX] * len(ids)
            continue
        if ids[:n_prefix] != prefix_ids or ids[-len(closing):] != closing or len(ids) <= n_prefix:
            raise DataError(sample_ref, TOKENIZATION_MISMATCH,
                            f"template {template_name!r}: the assistant message {text[:40]!r}... does not tokenise "
                            f"as role prefix + text + {conv.end_token!r} (a leading/trailing whitespace merging "
                            f"with the template's tokens?)")
        input_ids += ids
        labels += [IGNORE_INDEX] * n_prefix + ids[n_prefix:len(ids) - n_tail] + [IGNORE_INDEX] * n_tail
    if check_whole:
        whole = bos + encoded[len(pieces)]
        if whole != input_ids:
            first = next((i for i, (a, b) in enumerate(zip(whole, input_ids)) if a != b),
                         min(len(whole), len(input_ids)))
            raise DataError(sample_ref, TOKENIZATION_MISMATCH,
                            f"template {template_name!r}: tokenising message by message differs from tokenising "
                            f"the whole prompt (first difference at token {first}); training would not see what "
                            f"inference sees")

    truncated = max_length is not None and len(input_ids) > max_length
    if truncated:
        img_ends = [i for i, t in enumerate(input_ids) if t == tt.img_end_id]
        if img_ends and img_ends[-1] >= max_length:
            raise DataError(sample_ref, TOO_LONG,
                            f"{len(input_ids)} tokens; the image tokens end at {img_ends[-1] + 1} > max_length "
                            f"{max_length} (lower max_dynamic_patch or raise max_seq_length)")
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    num_trained = len(labels) - labels.count(IGNORE_INDEX)
    if num_trained == 0:
        raise DataError(sample_ref, NO_TRAINED_TOKENS,
                        f"no assistant token left to train ({len(input_ids)} tokens, max_length {max_length})")
    ids_t = torch.tensor(input_ids, dtype=torch.long)
    return {"input_ids": ids_t, "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.ones_like(ids_t), "num_trained": num_trained, "truncated": truncated}


def _encode_pieces(conv, turns, tokenizer, tt: TemplateTokens, counts: Sequence[int], placeholder: str,
                   with_whole: bool) -> tuple[list[tuple[str, str, str, str]], list[list[int]]]:
    """Fill ``conv`` with ``turns`` (placeholders expanded) and tokenise every piece, plus the whole prompt when
    ``with_whole`` (last entry), in one tokenizer call. Returns ``(pieces, ids per piece [+ whole])``.

    With ``tt.compress_images`` each image is tokenised as one context token and its id repeated ``counts[i]``
    times afterwards; if the tokenizer did not keep those context tokens apart the texts are tokenised again
    with the images expanded, so the ids are always those of the expanded text."""
    for compress in ((True, False) if tt.compress_images else (False,)):
        conv.messages = []
        used = 0
        for who, text in turns:
            if who == USER:
                text, used = expand_placeholders(text, [1] * len(counts) if compress else counts, placeholder, used)
            conv.append_message(conv.roles[who], text)
        pieces = conv.message_pieces()
        texts = [prefix + text + suffix for _, prefix, text, suffix in pieces]
        system_ids = tt.system_ids.get(texts[0])  # the system piece rarely changes: tokenised once
        to_encode = texts[1:] if system_ids is not None else list(texts)
        if with_whole:
            to_encode.append("".join(texts))
        encoded = _encode_many(tokenizer, to_encode)
        if system_ids is None:
            if len(tt.system_ids) >= _SYSTEM_CACHE_SIZE:
                tt.system_ids.clear()
            system_ids = tt.system_ids[texts[0]] = tuple(encoded.pop(0))
        encoded.insert(0, list(system_ids))
        if not compress:
            break
        expanded = _expand_sequence(encoded[:len(pieces)], tt.context_id, counts)
        whole = _expand_runs(encoded[-1], tt.context_id, counts) if with_whole else []
        if expanded is not None and whole is not None:
            encoded = expanded + ([whole] if with_whole else [])
            break
    return pieces, encoded


def _expand_sequence(encoded: list[list[int]], context_id: int, counts: Sequence[int]) -> list[list[int]] | None:
    """``_expand_runs`` over consecutive id lists that together hold the ``counts`` images in order."""
    out, k = [], 0
    for ids in encoded:
        n = ids.count(context_id)
        part = _expand_runs(ids, context_id, counts[k:k + n])
        if part is None:
            return None
        out.append(part)
        k += n
    return out if k == len(counts) else None


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


__all__ = ["TemplateTokens", "check_template", "encode_generation_prompt", "expand_placeholders", "generation_prompt",
           "image_token_string", "preprocess", "single_token_id", "split_conversation", "template_tokens"]
