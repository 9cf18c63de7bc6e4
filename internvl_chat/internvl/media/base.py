"""Media kinds: how a JSONL row's media reference becomes encoder items. One dispatch for every kind.

A row names its media under a key (``"image"``, and whatever plugins register: ``"wsi"``, ``"features"``,
``"volume"``, ...). The value is one reference or a list of references; each reference fills one placeholder
(``<image>`` unless the reader declares another) in the conversation, in order. The dataset never knows a
kind's name: it asks ``MEDIA_READERS`` for the reader registered under each key present in the row.

Contract (``MediaReader``):

* class attributes ``kind`` (the row key), ``placeholder`` (default ``"<image>"``), ``placeholder_aliases``
  (other placeholders it accepts, e.g. Brainfound's ``<meditk>``; other row keys are registry aliases:
  ``@register_media_reader("volume", aliases=("meditk",))``) and ``is_file`` (whether references are paths
  resolved against the dataset ``root``).
* ``__init__(self, config, options)``: ``config`` is the ``InternVLChatConfig`` (the reader takes tile size,
  normalisation, volume shape ... from ``config.vision_config``); ``options`` is a dict of data options
  (``dynamic_image_size``, ``max_dynamic_patch``, ``use_thumbnail``, ... plus per-dataset meta-JSON overrides).
* ``load(ref, *, is_train=False) -> list[Tensor]``: the items for one reference (an image gives its tiles).
  ``ref`` is already resolved against ``root`` when ``is_file``. Failures raise ``MediaError`` naming the file.
* ``check(ref)``: a cheap validation for ``check_data`` (default: the file exists).
"""
from __future__ import annotations

import os
from typing import Any

import torch

from internvl.registry import Registry

MEDIA_READERS = Registry("media kind")


class MediaError(Exception):
    """A media reference that cannot be read; the message names the file (and slide coordinate, line ...)."""


def register_media_reader(kind: str, *, aliases=()):
    """Decorator: register a ``MediaReader`` subclass for the row key ``kind``."""
    return MEDIA_READERS.register(kind, aliases=aliases)


def list_media_kinds() -> list[str]:
    return MEDIA_READERS.names()


class MediaReader:
    kind: str = ""
    placeholder: str = "<image>"
    placeholder_aliases: tuple[str, ...] = ()
    is_file: bool = True

    def __init__(self, config, options: dict[str, Any] | None = None):
        self.config = config
        self.options = dict(options or {})

    def load(self, ref: Any, *, is_train: bool = False) -> list[torch.Tensor]:
        raise NotImplementedError

    def check(self, ref: Any) -> None:
        for path in _paths(ref):
            if not os.path.exists(path):
                raise MediaError(f"{path}: file not found")


def _paths(ref: Any) -> list[str]:
    if isinstance(ref, str):
        return [ref]
    if isinstance(ref, (list, tuple)):
        return [p for r in ref for p in _paths(r)]
    if isinstance(ref, dict):
        return [p for v in ref.values() for p in _paths(v) if isinstance(v, (str, list, tuple))]
    return []


def resolve_ref(ref: Any, root: str | None) -> Any:
    """Join relative paths in ``ref`` (str, list, or dict with a ``path``) with ``root``."""
    if isinstance(ref, str):
        return ref if (not root or os.path.isabs(ref) or "://" in ref) else os.path.join(root, ref)
    if isinstance(ref, (list, tuple)):
        return [resolve_ref(r, root) for r in ref]
    if isinstance(ref, dict):
        return {k: (resolve_ref(v, root) if k in ("path", "paths", "file") else v) for k, v in ref.items()}
    return ref


def reader_for_key(key: str):
    """The reader class for a row key (a kind or one of its aliases), or None if no reader claims it."""
    from internvl.registry import load_plugins

    load_plugins()
    if key in MEDIA_READERS:
        return MEDIA_READERS.get(key)
    return None


def token_count(config, item: torch.Tensor) -> int:
    """``<IMG_CONTEXT>`` tokens one item becomes: the encoder's token count through the projector."""
    from internvl.model.projector import PROJECTORS
    from internvl.model.vision.base import encoder_class

    n_enc = encoder_class(config.vision_config).num_tokens(config.vision_config, item)
    return PROJECTORS.get(config.projector).num_output_tokens(config, n_enc)
