"""The row processor: the one path from a JSONL row to model inputs, for training, evaluation, chat and checks.

    row -> media references (key, kind) -> items -> <IMG_CONTEXT> count per reference -> expanded prompt -> ids

(transformers' processor/model split: the model only scatters embeddings into the ``<IMG_CONTEXT>`` positions and
checks the count.) Everything a row's media go through is decided here, once:

* **Media keys.** Any row key that a registered media reader claims (``internvl.media.reader_for_key``; aliases
  such as ``meditk`` or ``slide`` resolve to their kind) is media; the value is one reference or a list. A row may
  hold several keys (T1 volume + fMRI run, slide + thumbnail): their references fill the placeholders in the order
  the keys appear in the row, each key's list in order. ``video`` (no reader) is an error, never text-only.
* **Towers.** Each kind must be read by one of the model's vision towers (``config.tower_of``); the reader gets
  that tower's config view (``config.tower(kind)``), so its tile size / volume shape are the right encoder's.
* **Placeholders.** A reader's own placeholder and aliases (``<meditk>``) are rewritten to ``<image>`` in user
  turns. A row with exactly one reference and no placeholder gets ``<image>\\n`` in front of its first user turn
  (InternVL's rule); otherwise placeholders and references must match in number.
* **Counts.** A reference becomes ``sum(config.num_context_tokens(item, kind))`` context tokens over its items.
* **Boxes.** A row's ``boxes`` (source coordinates; format in ``internvl.grounding``) are placed by the reader of
  the reference they are on (``MediaReader.map_boxes``) and written into its ``<box>name</box>`` references
  before tokenisation (``place_boxes``), for training samples and generation prompts.
* **Text.** ``internvl.prompt``: ``preprocess`` for training (ids + labels), ``generation_prompt`` for evaluation
  and chat (the same rendering up to the reply, so its ids are a prefix of the training ids).

Errors are ``DataError`` naming ``file:line`` with a reason code (``internvl.errors``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from internvl.constants import IMAGE_PLACEHOLDER, RESERVED_IMAGE_TOKENS
from internvl.errors import (BAD_ROW, INCOMPATIBLE_KIND, MISSING_FILE, PLACEHOLDER_MISMATCH, RESERVED_TOKEN,
                             UNREADABLE_MEDIA, DataError)
from internvl.media import MEDIA_READERS, MediaError, known_placeholders, reader_for_key, resolve_ref
from internvl.media.base import BoxError
from internvl.model.vision.base import encoder_class
from internvl.prompt import ASSISTANT_ROLES, USER_ROLES, encode_generation_prompt, generation_prompt, preprocess

# row keys that are never media (skips a registry lookup); any other key is offered to the media registry
NON_MEDIA_KEYS = frozenset({"id", "conversations", "width", "height", "width_list", "height_list", "length",
                            "source", "task", "meta", "answer", "question", "question_id", "options", "classes",
                            "synonyms", "boxes"})
# InternVL media keys the core has no reader for; a row using one is an error, never silently text-only
UNSUPPORTED_MEDIA_KEYS = ("video",)


@dataclass
class RowMedia:
    """A row's media in prompt order: per reference its kind and items."""

    kinds: list[str] = field(default_factory=list)
    items: list[list[torch.Tensor]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def flat(self) -> tuple[list[torch.Tensor], list[str]]:
        """(items, kind of each item) in prompt order."""
        items = [it for per_ref in self.items for it in per_ref]
        kinds = [k for k, per_ref in zip(self.kinds, self.items) for _ in per_ref]
        return items, kinds


@dataclass
class PromptInputs:
    """What generation needs for one row: prompt ids and the items (with kinds) for its placeholders."""

    input_ids: list[int]
    items: list[torch.Tensor]
    item_kinds: list[str]
    question: str
    history: list[tuple[str, str]]
    system: str | None


def split_row(row: dict, where: str, require_reference: bool = True) -> tuple[str, list[tuple[str, str]], Any, str | None]:
    """(question, history [(q, a)...], reference, system prompt) of a test row; ``DataError`` naming ``where``.

    The last ``gpt`` turn is the reference (an ``answer`` field wins), the last ``human`` turn the question,
    earlier turns the history; InternVL's VQA format (``question`` + ``answer``, no conversations) too."""
    conv = row.get("conversations")
    if conv is None:
        if "question" not in row or ("answer" not in row and require_reference):
            raise DataError(where, BAD_ROW, "row has neither 'conversations' nor 'question' + 'answer'")
        return str(row["question"]), [], row.get("answer"), None
    if not isinstance(conv, list) or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in conv):
        raise DataError(where, BAD_ROW, "'conversations' must be a list of {'from', 'value'} turns")
    system = conv[0]["value"] if conv and conv[0].get("from") == "system" else None
    turns = conv[1:] if system is not None else list(conv)
    reference = None
    if turns and turns[-1].get("from") in ASSISTANT_ROLES:
        reference, turns = turns[-1]["value"], turns[:-1]
    reference = row.get("answer", reference)
    if reference is None and require_reference:
        raise DataError(where, BAD_ROW, "no reference answer (no final 'gpt' turn and no 'answer' field)")
    roles = [t.get("from") for t in turns]
    if not turns or len(turns) % 2 == 0 or any(
            r not in (USER_ROLES if i % 2 == 0 else ASSISTANT_ROLES) for i, r in enumerate(roles)):
        raise DataError(where, BAD_ROW, f"turns must alternate human/gpt and end with the question (got {roles})")
    history = [(turns[i]["value"], turns[i + 1]["value"]) for i in range(0, len(turns) - 1, 2)]
    return turns[-1]["value"], history, reference, system


def media_data_error(where: str, exc: MediaError) -> DataError:
    """A reader's ``MediaError`` as the row's ``DataError`` (``missing_file`` when a file was absent)."""
    reason = MISSING_FILE if isinstance(exc.__cause__, FileNotFoundError) else UNREADABLE_MEDIA
    return DataError(where, reason, str(exc))


class RowProcessor:
    """Turns rows into model inputs for one model config and tokenizer (see the module docstring).

    Args:
        config: the ``InternVLChatConfig`` (towers, token counts, template, tiling defaults).
        tokenizer: a tokenizer with the template's and InternVL's special tokens (``None``: media only).
        template: conversation template (default ``config.template``).
        options: data options shared by every dataset (finetune/eval flags); a dataset's meta keys override them.
        max_seq_length: training samples are truncated to it (never through an image span).
    """

    def __init__(self, config, tokenizer=None, *, template: str | None = None, options: dict | None = None,
                 max_seq_length: int | None = None):
        self.config = config
        self.tokenizer = tokenizer
        self.template = template or config.template
        self.options = {k: v for k, v in (options or {}).items() if v is not None}
        self.max_seq_length = max_seq_length
        self.system_message = getattr(config, "system_message", None)
        self._readers: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------------------------------------------- media
    def media_keys(self, row: dict, where: str) -> list[tuple[str, list]]:
        """``[(kind, references)]`` in row order; ``DataError`` for media no reader or no tower reads."""
        found = []
        for key, value in row.items():
            if key in NON_MEDIA_KEYS or value is None or value == "" or (isinstance(value, list) and not value):
                continue
            if reader_for_key(key) is not None:
                kind = MEDIA_READERS.get(key).kind or MEDIA_READERS.resolve(key)
                try:
                    self.config.tower_of(kind)
                except KeyError as exc:
                    raise DataError(where, INCOMPATIBLE_KIND, f"row has {key!r} media but {exc.args[0]}") from exc
                found.append((kind, list(value) if isinstance(value, list) else [value]))
            elif key in UNSUPPORTED_MEDIA_KEYS:
                raise DataError(where, BAD_ROW, f"row has {key!r} media but no media reader is registered for "
                                                f"{key!r} (known kinds: {', '.join(MEDIA_READERS.names())})")
        return found

    def reader(self, kind: str, dataset_options: dict | None = None):
        """The reader of ``kind`` for the tower that reads it, with the shared options + a dataset's overrides."""
        opts = {**self.options, **(dataset_options or {})}
        key = (kind, json.dumps(opts, sort_keys=True, default=str))
        if key not in self._readers:
            self._readers[key] = MEDIA_READERS.get(kind)(self.config.tower(kind), opts)
        return self._readers[key]

    def load_media(self, row: dict, where: str, *, root: str | None = None, dataset_options: dict | None = None,
                   is_train: bool = False) -> RowMedia:
        """Read every reference of the row (in prompt order) and count its context tokens."""
        def read(reader, refs):
            if reader.is_file:
                for r in refs:
                    if isinstance(r, str) and "://" not in r and not os.path.exists(r):
                        raise DataError(where, MISSING_FILE, f"{r}: file not found")
            return reader.load_many(refs, is_train=is_train)

        media = RowMedia()
        for kind, _, items in self._per_reference(row, where, root, dataset_options, read):
            media.kinds.append(kind)
            media.items.append(items)
            media.counts.append(sum(self.config.num_context_tokens(it, kind) for it in items))
        return media

    def _per_reference(self, row: dict, where: str, root: str | None, dataset_options: dict | None, read):
        """``(kind, reference, result)`` for every media reference of the row in prompt order, where
        ``read(reader, references)`` gives one non-empty list per reference of a key (references resolved against
        ``root``); reader failures become ``DataError`` naming ``where``."""
        for kind, refs in self.media_keys(row, where):
            reader = self.reader(kind, dataset_options)
            if reader.is_file:
                refs = [resolve_ref(r, root) for r in refs]
            try:
                results = read(reader, refs)
            except MediaError as exc:
                raise media_data_error(where, exc) from exc
            for ref, got in zip(refs, results):
                if not got:
                    raise DataError(where, UNREADABLE_MEDIA, f"{ref}: the {kind!r} reader returned no item")
                yield kind, ref, got

    def _normalise(self, texts: list[str], kinds: list[str], where: str) -> list[str]:
        """Readers' own placeholders -> ``<image>``; one reference without placeholder goes in front of text 0."""
        out = list(texts)
        for kind in dict.fromkeys(kinds):
            cls = MEDIA_READERS.get(kind)
            for ph in (cls.placeholder, *cls.placeholder_aliases):
                if ph and ph != IMAGE_PLACEHOLDER:
                    out = [t.replace(ph, IMAGE_PLACEHOLDER) for t in out]
        found = sum(t.count(IMAGE_PLACEHOLDER) for t in out)
        if not kinds:
            stray = sorted(ph for ph in known_placeholders() if any(ph in t for t in out))
            if stray:
                raise DataError(where, PLACEHOLDER_MISMATCH, f"{stray} placeholder(s) but the row has no media")
            return out
        if found == 0 and len(kinds) == 1 and out:
            out[0] = IMAGE_PLACEHOLDER + "\n" + out[0]
        elif found != len(kinds):
            raise DataError(where, PLACEHOLDER_MISMATCH, f"{found} {IMAGE_PLACEHOLDER!r} placeholder(s) in the user "
                                                         f"turns but {len(kinds)} media reference(s)")
        return out

    def place_boxes(self, row: dict, where: str, *, root: str | None = None, dataset_options: dict | None = None,
                    is_train: bool = False) -> dict:
        """A copy of ``row`` whose ``<box>name</box>`` references (conversation turns, ``question``, ``answer``)
        hold its ``boxes`` placed by their media readers (``internvl.grounding``); ``row`` itself if it has none."""
        from internvl import grounding

        entries = grounding.row_boxes(row, where)
        if not entries:
            return row
        refs = [(kind, r) for kind, rs in self.media_keys(row, where) for r in rs]
        placed = {}
        for e in entries:
            if (e.media is None and len(refs) != 1) or (e.media or 0) >= len(refs):
                raise grounding.MalformedBoxError(where, f"boxes[{e.name!r}]: media {e.media} but the row has "
                                                         f"{len(refs)} media reference(s); name one with \"media\": i")
            kind, ref = refs[e.media or 0]
            reader = self.reader(kind, dataset_options)
            try:
                placed[e.name] = reader.map_boxes(resolve_ref(ref, root) if reader.is_file else ref, e.coords,
                                                  e.space, is_train=is_train)
            except BoxError as exc:
                raise DataError(where, exc.reason, str(exc)) from exc
            except MediaError as exc:
                raise media_data_error(where, exc) from exc
        used: set[str] = set()

        def fill(value):
            return grounding.fill_box_refs(value, placed, where, used) if isinstance(value, str) else value

        out = {**row, **{k: fill(row[k]) for k in ("question", "answer") if k in row}}
        if isinstance(row.get("conversations"), list):
            out["conversations"] = [dict(t, value=fill(t.get("value"))) if isinstance(t, dict) else t
                                    for t in row["conversations"]]
        if set(placed) - used:
            raise grounding.MalformedBoxError(where, f"boxes {sorted(set(placed) - used)} are never referred to as "
                                                     f"<box>name</box> in the text")
        return out

    # ------------------------------------------------------------------------------------------------ outputs
    def training_sample(self, row: dict, where: str, *, root: str | None = None,
                        dataset_options: dict | None = None, augment: bool = False) -> dict[str, Any]:
        """``input_ids``/``labels``/``attention_mask``/``position_ids`` (1-D), ``pixel_values`` (items in prompt
        order), ``item_kinds``, ``sample_ref``, ``num_trained``."""
        self._check_conversations(row, where)
        row = self.place_boxes(row, where, root=root, dataset_options=dataset_options, is_train=augment)
        media = self.load_media(row, where, root=root, dataset_options=dataset_options, is_train=augment)
        out = preprocess(self.template, self._training_turns(row, media.kinds, where), self.tokenizer, media.counts,
                         sample_ref=where, max_length=self.max_seq_length)
        items, kinds = media.flat()
        n = out["input_ids"].shape[0]
        return {"input_ids": out["input_ids"], "labels": out["labels"], "attention_mask": out["attention_mask"],
                "position_ids": torch.arange(n, dtype=torch.long), "pixel_values": items, "item_kinds": kinds,
                "sample_ref": where, "num_trained": out["num_trained"], "truncated": out["truncated"]}

    def sample_size(self, row: dict, where: str, *, root: str | None = None,
                    dataset_options: dict | None = None) -> tuple[int, int]:
        """``(tokens, items)`` of the training sample of ``row``, exactly as ``training_sample`` would build it,
        with item shapes from the readers' ``item_shapes_many`` (from file headers where a reader can: no pixels
        decoded) -- what packing plans with."""
        self._check_conversations(row, where)
        row = self.place_boxes(row, where, root=root, dataset_options=dataset_options)
        kinds, counts, n_items = [], [], 0
        for kind, _, shapes in self._per_reference(row, where, root, dataset_options,
                                                   lambda reader, refs: reader.item_shapes_many(refs)):
            kinds.append(kind)
            counts.append(sum(self.config.num_context_tokens(torch.empty(shape, device="meta"), kind)
                              for shape in shapes))
            n_items += len(shapes)
        out = preprocess(self.template, self._training_turns(row, kinds, where), self.tokenizer, counts,
                         sample_ref=where, max_length=self.max_seq_length)
        return int(out["input_ids"].shape[0]), n_items

    @staticmethod
    def _check_conversations(row: dict, where: str) -> None:
        convs = row.get("conversations")
        if not isinstance(convs, list) or not convs:
            raise DataError(where, BAD_ROW, "row has no non-empty 'conversations' list")

    def _training_turns(self, row: dict, kinds: list[str], where: str) -> list:
        """The row's turns as ``preprocess`` takes them: the model's system prompt first (as generation uses it)
        unless the row has its own, placeholders normalised for ``kinds``."""
        convs = [dict(t) if isinstance(t, dict) else t for t in row["conversations"]]
        has_system = isinstance(convs[0], dict) and convs[0].get("from") == "system"
        if self.system_message is not None and not has_system:
            convs = [{"from": "system", "value": self.system_message}] + convs
        users = [t for t in convs if isinstance(t, dict) and t.get("from") in USER_ROLES
                 and isinstance(t.get("value"), str)]
        for turn, text in zip(users, self._normalise([t["value"] for t in users], kinds, where)):
            turn["value"] = text
        return convs

    def prompt_inputs(self, row: dict, where: str, *, root: str | None = None,
                      dataset_options: dict | None = None) -> PromptInputs:
        """The generation prompt of a row (its last user turn after its history), with its media items."""
        row = self.place_boxes(row, where, root=root, dataset_options=dataset_options)
        question, history, _, system = split_row(row, where, require_reference=False)
        for text in [question, *(t for pair in history for t in pair), system or ""]:
            for token in RESERVED_IMAGE_TOKENS:
                if token in text:
                    raise DataError(where, RESERVED_TOKEN, f"the text contains {token!r}, which only the image "
                                                           f"expansion may produce")
        media = self.load_media(row, where, root=root, dataset_options=dataset_options)
        texts = self._normalise([q for q, _ in history] + [question], media.kinds, where)
        history = [(q, a) for q, (_, a) in zip(texts[:-1], history)]
        question = texts[-1]
        prompt = generation_prompt(self.template, question, media.counts, history=history,
                                   system=system if system is not None else self.system_message)
        items, kinds = media.flat()
        return PromptInputs(encode_generation_prompt(self.tokenizer, prompt), items, kinds, question, history,
                            system)

    def estimate_length(self, row: dict, where: str) -> int:
        """Tokens a row will take, from the row alone (no media read): its ``length`` field when present, else
        its text's tokens plus, per reference, the most context tokens its reader can produce."""
        if isinstance(row.get("length"), int):
            return row["length"]
        convs = row.get("conversations") or []
        text = "\n".join(t.get("value", "") for t in convs if isinstance(t, dict) and isinstance(t.get("value"), str))
        n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
        for kind, refs in self.media_keys(row, where):
            view = self.config.tower(kind)
            dummy = encoder_class(view.vision_config).dummy_input(view.vision_config)
            n += len(refs) * self.reader(kind).max_items() * self.config.num_context_tokens(dummy, kind)
        return n


__all__ = ["NON_MEDIA_KEYS", "PromptInputs", "RowMedia", "RowProcessor", "UNSUPPORTED_MEDIA_KEYS", "split_row"]
