"""Media readers: the one dispatch from a JSONL row's media keys to encoder items (see ``base``)."""
from internvl.media.base import (MEDIA_READERS, MediaError, MediaReader, known_option_names, known_placeholders,
                                 list_media_kinds, reader_for_key, register_media_reader, resolve_ref)
from internvl.media import image  # noqa: F401,E402  (registers the core "image" kind)

__all__ = ["MEDIA_READERS", "MediaError", "MediaReader", "known_option_names", "known_placeholders",
           "list_media_kinds", "reader_for_key", "register_media_reader", "resolve_ref"]
