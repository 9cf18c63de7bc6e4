"""Expected failures, and the one error policy every entry point follows.

``InputError`` marks a failure caused by what the user gave (data, a checkpoint, a config, a flag), as opposed to a
bug. Every command-line entry point runs through ``run_cli``: an ``InputError`` (or a missing/unreadable file)
prints one line ``error: <file>[:line] [reason] message`` on stderr and exits with ``EXIT_BAD_INPUT`` (2); anything
else is a bug and keeps its traceback. ``--debug`` or ``INTERNVL_DEBUG=1`` shows the traceback of expected failures
too. Under a multi-process launch (``internvl.train.launch``) the workers write the line into
``$INTERNVL_ERROR_FILE`` instead (the first one wins) and the launcher prints it once.

Errors of the data pipeline name the sample (``"file.jsonl:17"``) they are about:

* ``DataError``: one sample is bad (malformed line, missing or unreadable media, placeholder/media mismatch,
  too long for its image tokens, nothing to train, ...). ``reason`` is a short stable code (see ``REASONS``)
  used by the skip policy and by ``check_data``'s per-reason counts.
* ``TemplateError``: the chat template does not fit the tokenizer (its end token is not one special token).
  That is a configuration error that would hit every sample, so it is never skipped.
"""
from __future__ import annotations

import os
import sys

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
MALFORMED_BOX = "malformed_box"  # a <box> or a row's "boxes" entry that breaks internvl.grounding's rules
BOX_OUT_OF_VIEW = "box_out_of_view"  # a row's box lies (partly) outside the field of view the media keep
BOXES_UNSUPPORTED = "boxes_unsupported"  # a row gives "boxes" for media whose reader cannot place boxes

REASONS = (MALFORMED_JSON, BAD_ROW, MISSING_FILE, UNREADABLE_MEDIA, PLACEHOLDER_MISMATCH, INCOMPATIBLE_KIND,
           RESERVED_TOKEN, TOO_LONG, NO_TRAINED_TOKENS, TOKENIZATION_MISMATCH, MISSING_ANNOTATION,
           MALFORMED_BOX, BOX_OUT_OF_VIEW, BOXES_UNSUPPORTED)


EXIT_BAD_INPUT = 2


class InputError(Exception):
    """Base of every expected failure caused by the user's input (the message names the file)."""


class ConfigError(InputError, ValueError):
    """A bad flag, option or configuration value (the message names the flag or key)."""


class DataError(InputError, ValueError):
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


class TemplateError(InputError, ValueError):
    """The chat template and the tokenizer do not fit together (raised for the first sample that shows it)."""


class SkipBudgetExceeded(InputError, RuntimeError):
    """More bad samples than ``skip_bad_samples`` allows; the message lists the counts by reason."""


EXPECTED = (InputError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def report(exc: BaseException) -> int:
    """Print (or, under the multi-process launcher, record) the one ``error:`` line; returns the exit code."""
    line = f"error: {exc}".replace("\n", " ")
    path = os.environ.get("INTERNVL_ERROR_FILE")
    if path:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return EXIT_BAD_INPUT  # another rank reported first
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(line + "\n")
        return EXIT_BAD_INPUT
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None and getattr(tqdm.tqdm, "_instances", None):  # on its own line, not after a progress bar
        tqdm.tqdm.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)
    return EXIT_BAD_INPUT


def run_cli(main, argv=None) -> int:
    """Run an entry point's ``main(argv)`` under the error policy (module docstring)."""
    debug = os.environ.get("INTERNVL_DEBUG", "") not in ("", "0") or "--debug" in (sys.argv if argv is None else argv)
    if argv is None:
        argv = [a for a in sys.argv[1:] if a != "--debug"]
    else:
        argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv) or 0
    except EXPECTED as exc:
        if debug:
            raise
        return report(exc)
    except BaseException:
        # under the multi-process launcher: once a rank has reported bad input and left, the others fail in their
        # next collective; that is the same bad input, not a second error, and the launcher prints the line
        path = os.environ.get("INTERNVL_ERROR_FILE")
        if path and os.path.exists(path) and not debug:
            return EXIT_BAD_INPUT
        raise
