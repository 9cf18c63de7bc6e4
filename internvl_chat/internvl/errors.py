"""Errors of the data pipeline. Every one names the sample (``"file.jsonl:17"``) it is about.

* ``DataError``: one sample is bad (malformed line, missing or unreadable media, placeholder/media mismatch,
  too long for its image tokens, nothing to train, ...). ``reason`` is a short stable code (see ``REASONS``)
  used by the skip policy and by ``check_data``'s per-reason counts.
* ``TemplateError``: the chat template does not fit the tokenizer (its end token is not one special token).
  That is a configuration error that would hit every sample, so it is never skipped.
"""
from __future__ import annotations

MALFORMED_JSON = "malformed_json"
BAD_ROW = "bad_row"  # schema: no conversations, unknown role, non-string value, roles out of order
MISSING_FILE = "missing_file"
UNREADABLE_MEDIA = "unreadable_media"
PLACEHOLDER_MISMATCH = "placeholder_mismatch"
INCOMPATIBLE_KIND = "incompatible_kind"
RESERVED_TOKEN = "reserved_token"
TOO_LONG = "too_long"
NO_TRAINED_TOKENS = "no_trained_tokens"
TOKENIZATION_MISMATCH = "tokenization_mismatch"
MISSING_ANNOTATION = "missing_annotation"  # a whole dataset's JSONL is absent (check_data only)

REASONS = (MALFORMED_JSON, BAD_ROW, MISSING_FILE, UNREADABLE_MEDIA, PLACEHOLDER_MISMATCH, INCOMPATIBLE_KIND,
           RESERVED_TOKEN, TOO_LONG, NO_TRAINED_TOKENS, TOKENIZATION_MISMATCH, MISSING_ANNOTATION)


class DataError(ValueError):
    """One bad sample. ``str(err)`` is ``"<sample_ref>: <message> [<reason>]"``."""

    def __init__(self, sample_ref: str, reason: str | None = None, message: str | None = None):
        if reason is None and message is None:  # one pre-formatted message (a DataLoader worker re-raising)
            self.sample_ref, self.reason, self.message = "", "unknown", sample_ref
            super().__init__(sample_ref)
            return
        self.sample_ref = sample_ref
        self.reason = reason or "unknown"
        self.message = message or ""
        super().__init__(f"{sample_ref}: {self.message} [{self.reason}]")

    def __reduce__(self):  # keep the fields when the error crosses a DataLoader worker boundary
        return (type(self), (self.sample_ref, self.reason, self.message))


class TemplateError(ValueError):
    """The chat template and the tokenizer do not fit together (raised for the first sample that shows it)."""


class SkipBudgetExceeded(RuntimeError):
    """More bad samples than ``skip_bad_samples`` allows; the message lists the counts by reason."""
