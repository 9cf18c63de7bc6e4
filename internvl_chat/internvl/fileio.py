"""Atomic file and directory writes (a reader or a resumed run never sees a half-written output), and the check
that a generated build is current."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def atomic_write_text(text: str, file: str | Path) -> None:
    file = Path(file)
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, file)


@contextlib.contextmanager
def atomic_directory(out: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``out`` whole, on error it is removed."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def build_is_current(out: str | Path, info: dict) -> bool:
    """Whether ``out`` holds a build made with exactly ``info`` (its ``build_info.json``): generated data sets
    keep an identical build and rebuild on any change of what shaped them."""
    import json

    path = Path(out) / "build_info.json"
    if not path.is_file():
        return False
    with open(path, encoding="utf-8") as fh:
        return json.load(fh) == info
