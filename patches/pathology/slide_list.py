"""What ``--slides`` names: one slide file, a folder of slides, or a list file; and where each slide's output goes.

* a **slide file** (a known whole-slide extension, or any file OpenSlide recognises): that one slide;
* a **folder**: every slide under it (recursive; one entry per DICOM series folder; MIRAX data folders skipped);
* a **list file**: a text file with one path per line (``#`` comments; relative paths are relative to the list's
  folder) or a CSV with a ``slide``, ``path`` or ``wsi`` column.

Anything else is a ``SlideListError`` whose message names the path and says why (missing, binary but not a slide,
CSV without a path column); the CLI prints it as one line and exits 2. No slide library is imported unless a file
has to be sniffed, so a wrong path fails in well under a second of work after start-up.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".dcm", ".scn", ".bif", ".vms", ".vmu",
                    ".svslide", ".qptiff")
LIST_EXTENSIONS = (".txt", ".csv", ".lst", ".list", ".tsv")


class SlideListError(ValueError):
    """``--slides`` names nothing usable; the message starts with the path."""


def _folder_slides(root: Path) -> list[Path]:
    found, dicom_dirs = [], set()
    mirax_dirs = {f.with_suffix("") for f in root.rglob("*.mrxs")}
    for f in sorted(root.rglob("*")):
        if not f.is_file() or f.suffix.lower() not in SLIDE_EXTENSIONS:
            continue
        if any(d in f.parents for d in mirax_dirs):
            continue
        if f.suffix.lower() == ".dcm":
            if f.parent in dicom_dirs:
                continue
            dicom_dirs.add(f.parent)
        found.append(f)
    return found


def _is_slide_file(p: Path) -> bool:
    if p.suffix.lower() in SLIDE_EXTENSIONS:
        return True
    if p.suffix.lower() in LIST_EXTENSIONS:
        return False
    import openslide  # only for files whose name says neither slide nor list

    return openslide.OpenSlide.detect_format(str(p)) is not None


def _list_file(p: Path) -> list[Path]:
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SlideListError(f"{p}: not a slide OpenSlide recognises and not a text list of slides "
                             f"(byte {exc.start} is not UTF-8)") from None
    lines = text.splitlines()
    head = next((ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")), "")
    if p.suffix.lower() == ".csv" or "," in head:
        rows = list(csv.DictReader(ln for ln in lines if not ln.lstrip().startswith("#")))
        column = next((c for c in ("slide", "path", "wsi") if rows and c in rows[0]), None)
        if column is None:
            raise SlideListError(f"{p}: CSV list needs a 'slide', 'path' or 'wsi' column "
                                 f"(has {list(rows[0]) if rows else 'no rows'})")
        names = [r[column].strip() for r in rows if (r[column] or "").strip()]
    else:
        names = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return [Path(n) if os.path.isabs(n) else p.parent / n for n in names]


def discover_slides(spec: str) -> list[Path]:
    """The slides ``spec`` names (see the module docstring); raises ``SlideListError``."""
    p = Path(spec)
    if p.is_dir():
        return _folder_slides(p)
    if not p.exists():
        raise SlideListError(f"{spec}: no such file or folder")
    if not p.is_file():
        raise SlideListError(f"{spec}: not a regular file or folder")
    if _is_slide_file(p):
        return [p]
    return _list_file(p)


def output_name(slide: Path) -> str:
    """The feature file's stem for a slide (its file stem; clashes are refused by the caller)."""
    return Path(slide).stem
