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
* ``option_names``: the data options it reads; these (and only these, over all registered readers) may appear
  as per-dataset keys of a meta JSON, so a typo is an error naming the key instead of a silently ignored option.
* ``__init__(self, config, options)``: ``config`` is the ``InternVLChatConfig`` view of the tower that reads this
  kind (``config.tower(kind)``: the reader takes tile size, normalisation, volume shape ... from
  ``config.vision_config``); ``options`` is a dict of data options (finetune/eval flags, then the meta entry's).
  An option that is absent falls back to the model config: each setting has one default, the config's.
* ``load(ref, *, is_train=False) -> list[Tensor]``: the items for one reference (an image gives its tiles).
  ``ref`` is already resolved against ``root`` when ``is_file``. Failures raise ``MediaError`` naming the file.
* ``load_many(refs, *, is_train=False) -> list[list[Tensor]]``: all references of one row (default: ``load`` each;
  images share the tile budget).
* ``max_items()``: the most items one reference can yield (default 1; images: the tile budget).
* ``item_shapes_many(refs) -> list[list[torch.Size]]``: the shape of every item ``load_many(refs)`` would give,
  for planning packed batches before any media is loaded. Default: load and look (exact, pays a read); a reader
  that can tell from a header overrides it (images: the size decides the tile grid; a volume reader: the file
  header and its preprocessing geometry).
* ``check(ref)``: a cheap validation for ``check_data`` (default: the file exists).
* ``map_boxes(ref, boxes, space, *, is_train=False) -> list of 0-1000 boxes``: a row's boxes in the source
  coordinates ``space`` of ``ref`` (``internvl.grounding``: ``pixel``, ``voxel``, ``world``) placed in the frame of
  the items ``load(ref)`` returns, through the same geometry (the reader's knowledge, never the core's). Default:
  ``BoxesUnsupportedError``. Failures raise a ``BoxError`` whose ``reason`` is the code the row is reported under.

Readers never import ``internvl.train`` or ``internvl.data``: they turn references into tensors, nothing more.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from internvl.errors import BOX_OUT_OF_VIEW, BOXES_UNSUPPORTED, MALFORMED_BOX, InputError
from internvl.registry import Registry

# what the core reads from a reader class without building it; plugin manifests record these (internvl.registry)
MEDIA_READERS = Registry("media kind", facts=("option_names", "placeholder", "placeholder_aliases"))


class MediaError(InputError):
    """A media reference that cannot be read; the message names the file (and slide coordinate, line ...)."""


class BoxError(MediaError):
    """A row box a reader cannot place; ``reason`` is the ``internvl.errors`` code the row is reported under."""

    reason = MALFORMED_BOX


class BoxOutOfViewError(BoxError):
    """A box (partly) outside the field of view the preprocessed media keep (or outside the source file)."""

    reason = BOX_OUT_OF_VIEW


class BoxesUnsupportedError(BoxError):
    """This reader (or its current settings) cannot place source-coordinate boxes."""

    reason = BOXES_UNSUPPORTED


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
    option_names: frozenset[str] = frozenset()

    def __init__(self, config, options: dict[str, Any] | None = None):
        self.config = config
        self.options = dict(options or {})

    def load(self, ref: Any, *, is_train: bool = False) -> list[torch.Tensor]:
        raise NotImplementedError

    def load_many(self, refs: list[Any], *, is_train: bool = False) -> list[list[torch.Tensor]]:
        return [self.load(r, is_train=is_train) for r in refs]

    def max_items(self) -> int:
        """The most items one reference can give (for length estimates made without reading media)."""
        return 1

    def item_shapes_many(self, refs: list[Any]) -> list[list[torch.Size]]:
        """The shapes of the items ``load_many(refs)`` gives (module docstring); default: load them."""
        return [[item.shape for item in items] for items in self.load_many(refs)]

    def check(self, ref: Any) -> None:
        for path in _paths(ref):
            if not os.path.exists(path):
                raise MediaError(f"{path}: file not found")

    def map_boxes(self, ref: Any, boxes: list[tuple[float, ...]], space: str, *,
                  is_train: bool = False) -> list[tuple[int, ...]]:
        """Source-coordinate boxes of ``ref`` -> 0-1000 boxes in the frame of ``load(ref)`` (module docstring)."""
        raise BoxesUnsupportedError(f"{ref}: the {self.kind!r} media reader cannot place boxes given in source "
                                    f"coordinates; write the 0-1000 <box> tokens into the text instead")


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


def known_option_names() -> frozenset[str]:
    """Every data option some registered reader reads (what a meta-JSON entry may set besides its own keys).
    Readers of plugins not imported yet count through their manifests (no plugin is imported for this)."""
    return frozenset(name for names in MEDIA_READERS.facts("option_names").values() for name in names)


def known_placeholders() -> frozenset[str]:
    """Every placeholder some registered reader fills (``placeholder`` and ``placeholder_aliases``), without
    importing plugins (see ``known_option_names``)."""
    aliases = MEDIA_READERS.facts("placeholder_aliases")
    found = set()
    for kind, placeholder in MEDIA_READERS.facts("placeholder").items():
        found.update(p for p in (placeholder, *aliases.get(kind, ())) if p)
    return frozenset(found)
