"""Lazy JSONL access: line offsets are indexed once, rows are parsed only when read.

Indexing at construction means a malformed line is reported with its real line number when it is read, and a
dataset of millions of rows costs two integers per line in memory instead of the parsed objects. Blank lines
are not rows (they are skipped, line numbers still count them). Handles are opened per process, so the index
can be pickled into DataLoader workers.
"""
from __future__ import annotations

import json
import os
from array import array
from typing import Any

from internvl.errors import BAD_ROW, MALFORMED_JSON, DataError


class JsonlIndex:
    """Byte offsets and 1-based line numbers of the non-blank lines of one JSONL file."""

    def __init__(self, path: str):
        self.path = path
        self.offsets = array("q")
        self.linenos = array("q")
        with open(path, "rb") as f:  # FileNotFoundError names the path
            offset = 0
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    self.offsets.append(offset)
                    self.linenos.append(lineno)
                offset += len(line)
        self._fh = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.offsets)

    def ref(self, i: int) -> str:
        """``"path:line"`` of row ``i``."""
        return f"{self.path}:{self.linenos[i]}"

    def raw(self, i: int) -> bytes:
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.path, "rb")
            self._pid = os.getpid()
        self._fh.seek(self.offsets[i])
        return self._fh.readline()

    def read(self, i: int) -> dict[str, Any]:
        """Row ``i`` parsed; ``DataError`` (malformed_json / bad_row) naming ``path:line``."""
        try:
            row = json.loads(self.raw(i))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(self.ref(i), MALFORMED_JSON, f"not valid JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise DataError(self.ref(i), BAD_ROW, f"a row must be a JSON object, got {type(row).__name__}")
        return row

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fh"] = None
        state["_pid"] = None
        return state

    def __del__(self):
        if getattr(self, "_fh", None) is not None:
            self._fh.close()


__all__ = ["JsonlIndex"]
