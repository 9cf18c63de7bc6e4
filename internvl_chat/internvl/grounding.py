"""The one box grammar of grounded text: parse, check, write and compare 2D and 3D boxes.

2D (InternVL's own format): ``<ref>phrase</ref><box>[[x1, y1, x2, y2], [x1, y1, x2, y2], ...]</box>``. Numbers are
on 0-1000 relative to the *original* image (``round(x / W * 1000)``, ``round(y / H * 1000)``; x to the right, y
down), so they do not depend on tiling. Several objects are several ``<ref>..</ref><box>..</box>`` groups; the
``<ref>`` is optional (a bare ``<box>`` has phrase ``None``).

3D (volumes): ``<ref>phrase</ref><box>[[x1, y1, z1, x2, y2, z2]]</box>`` on 0-1000 in the frame of the
*preprocessed* volume array ``[D, H, W]`` (after reorientation, resampling and crop/pad): x along the array's
*last* spatial axis (W), y along the middle one (H), z along the first (D), as in 2D where x runs along the last
(column) axis; 0 is the start edge of the first voxel and 1000 the end edge of the last
(``round(edge / N * 1000)``). For the neuro reader's RAS volumes (``[D, H, W]`` = inferior->superior,
posterior->anterior, left->right) that is x towards the patient's Right, y Anterior, z Superior.

A box is a tuple ``(x1, y1, x2, y2)`` or ``(x1, y1, z1, x2, y2, z2)`` with every number in 0..1000 and each min
<= its max. ``parse_grounded`` is strict (for data: any malformed ``<box>`` raises ``MalformedBoxError`` naming
``file:line``); ``parse_answer`` is lenient (for model answers: tags optional, surrounding text ignored, candidate
boxes that break a rule are counted in ``n_malformed``, never repaired). ``box_iou`` is MONAI's (2D and 3D).

Boxes in source coordinates (box-aware preprocessing). A row may carry its boxes in the coordinates of its media
file and let the pipeline place them::

    {"image": "cxr.png", "boxes": {"nodule": {"space": "pixel", "coords": [[120, 40, 180, 95]]}},
     "conversations": [{"from": "human", "value": "<image>\\nWhere is the nodule?"},
                       {"from": "gpt", "value": "<ref>nodule</ref><box>nodule</box>"}]}

* ``boxes``: ``{name: {"space": ..., "coords": [[...], ...], "media": i}}``; ``name`` is an identifier (letters,
  digits, ``_ . -``, not starting with a digit), ``media`` the index of the media reference (prompt order) the
  box is on, required only when the row has several references.
* ``space``: ``pixel`` (2D images: ``[x1, y1, x2, y2]`` in pixels of the original file, 0 = left/top edge,
  continuous: a box of the whole image is ``[0, 0, W, H]``); ``voxel`` (volumes: ``[i1, j1, k1, i2, j2, k2]``,
  the first and last voxel index, inclusive, along the file's own array axes); ``world`` (volumes:
  ``[x1, y1, z1, x2, y2, z2]`` two opposite corners in millimetres of the scanner/world RAS+ frame that the file's
  affine maps to, nibabel's convention). Every box has each min <= its max.
* The rule in the text: ``<box>name</box>`` (a box tag whose content is a name, not a list) is replaced by
  ``<box>[[...], ...]</box>``: the entry's boxes on 0-1000 as above, in every conversation turn and the
  ``question`` / ``answer`` fields (``fill_box_refs``). Every name used must be an entry and every entry used.
  Scored evaluation references must hold the tokens themselves (scoring has no reader; a name is an error).
* The media reader maps the boxes (``MediaReader.map_boxes``) through exactly the geometry its items go through.
  A box that reaches outside the field of view that the preprocessed media keep (or outside the source file) by
  more than ``BOX_VIEW_TOLERANCE`` of a voxel/pixel is an error (``box_out_of_view``; a counted skip under
  ``--skip_bad_samples``), never clipped; within that tolerance (rounding at the border) it is clamped.
  A malformed entry or a name that is not an entry is ``malformed_box``; a reader that cannot place boxes
  (and the volume reader under spatial augmentation) gives ``boxes_unsupported``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from internvl.errors import MALFORMED_BOX, DataError

SCALE = 1000

_NUM = r"-?\d+(?:\.\d+)?"
_GROUP = re.compile(r"(?:<ref>(.*?)</ref>\s*)?<box>(.*?)</box>", re.DOTALL)
_LIST = re.compile(r"\[([^\[\]]*)\]")
_NAME = r"[A-Za-z_][\w.\-]*"
_NAMED_BOX = re.compile(r"<box>\s*(" + _NAME + r")\s*</box>")
SPACES = {"pixel": 2, "voxel": 3, "world": 3}  # source coordinate space -> box dimensionality
BOX_VIEW_TOLERANCE = 0.5  # voxels / pixels a source box may overshoot the kept field of view (then clamped)
_STRICT_CONTENT = re.compile(r"\s*\[\s*\[[^\[\]]*\](?:\s*,\s*\[[^\[\]]*\])*\s*\]\s*")


class MalformedBoxError(DataError):
    """A ``<box>`` in data that breaks the grammar (module docstring); ``str()`` starts with ``file:line``."""

    def __init__(self, sample_ref: str, message: str | None = None):
        super().__init__(sample_ref, MALFORMED_BOX, message)


@dataclass
class Grounding:
    """One ``<ref>phrase</ref><box>...</box>`` group."""

    phrase: str | None
    boxes: list[tuple[float, ...]] = field(default_factory=list)


@dataclass
class ParsedAnswer:
    """What ``parse_answer`` found: well-formed groups, and how many candidate boxes were malformed."""

    groundings: list[Grounding]
    n_malformed: int = 0

    @property
    def boxes(self) -> list[tuple[float, ...]]:
        return [b for g in self.groundings for b in g.boxes]


def box_problem(numbers: list[float], dims: int | None = None) -> str | None:
    """Why ``numbers`` is not a valid box (``None`` if it is): count 4/6 (or ``2 * dims``), range, order."""
    n = len(numbers)
    if n not in (4, 6) or (dims is not None and n != 2 * dims):
        want = f"{2 * dims}" if dims is not None else "4 (2D) or 6 (3D)"
        return f"{n} numbers, expected {want}"
    if any(v < 0 or v > SCALE for v in numbers):
        return f"coordinates must lie in 0..{SCALE}"
    half = n // 2
    for axis, (lo, hi) in zip("xyz", zip(numbers[:half], numbers[half:])):
        if lo > hi:
            return f"{axis}1 > {axis}2 ({lo:g} > {hi:g})"
    return None


def _numbers(text: str) -> list[float] | None:
    parts = [p.strip() for p in text.split(",")]
    if not all(re.fullmatch(_NUM, p) for p in parts):
        return None
    return [float(p) for p in parts]


def parse_grounded(text: str, where: str, dims: int | None = None) -> list[Grounding]:
    """Strict: every ``<box>`` group of ``text``; ``MalformedBoxError(where)`` on any grammar break.
    ``dims`` (2 or 3) requires that dimensionality; otherwise all boxes of ``text`` must share one."""
    if text.count("<box>") != text.count("</box>"):
        raise MalformedBoxError(where, "unbalanced <box> / </box> tags")
    out = []
    for m in _GROUP.finditer(text):
        content = m.group(2)
        if not _STRICT_CONTENT.fullmatch(content):
            raise MalformedBoxError(where, f"<box>{content}</box>: expected [[x1, y1, x2, y2], ...]")
        boxes = []
        for item in _LIST.findall(content):
            numbers = _numbers(item)
            problem = "not numbers" if numbers is None else box_problem(numbers, dims)
            if problem:
                raise MalformedBoxError(where, f"box [{item.strip()}]: {problem}")
            boxes.append(tuple(numbers))
            dims = dims or len(numbers) // 2  # every later box must match the first one's dimensionality
        out.append(Grounding(m.group(1).strip() if m.group(1) is not None else None, boxes))
    if "<box>" in text and len(out) != text.count("<box>"):
        raise MalformedBoxError(where, "a <box> group is nested or not closed")
    return out


def parse_answer(text: str, dims: int | None = None) -> ParsedAnswer:
    """Lenient: ``<box>`` groups when the answer has any, else every ``[..]`` list of numbers in it (InternVL's
    own grounding eval reads bare lists). Lists that break ``box_problem`` are counted, not kept."""
    text = text or ""
    groups = [(m.group(1), m.group(2)) for m in _GROUP.finditer(text)] or [(None, text)]
    found, bad = [], 0
    for phrase, content in groups:
        boxes = []
        for item in _LIST.findall(content):
            numbers = _numbers(item)
            if numbers is None or box_problem(numbers, dims):
                bad += 1
                continue
            boxes.append(tuple(numbers))
        if boxes:
            found.append(Grounding(phrase.strip() if phrase is not None else None, boxes))
    return ParsedAnswer(found, bad)


def format_grounded(boxes, phrase: str | None = None) -> str:
    """``<ref>phrase</ref><box>[[...], ...]</box>`` with integer coordinates (the training-data form)."""
    body = ", ".join("[" + ", ".join(str(round(v)) for v in b) + "]" for b in boxes)
    ref = f"<ref>{phrase}</ref>" if phrase is not None else ""
    return f"{ref}<box>[{body}]</box>"


def normalize_2d(box_px, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel ``(x1, y1, x2, y2)`` on the original image -> 0-1000 (InternVL: ``round(x / W * 1000)``)."""
    x1, y1, x2, y2 = box_px
    return (round(x1 / width * SCALE), round(y1 / height * SCALE), round(x2 / width * SCALE),
            round(y2 / height * SCALE))


def to_pixels_2d(box, width: int, height: int) -> tuple[float, float, float, float]:
    """0-1000 ``(x1, y1, x2, y2)`` -> pixels of a ``width`` x ``height`` image (inverse of ``normalize_2d``)."""
    x1, y1, x2, y2 = box
    return (x1 * width / SCALE, y1 * height / SCALE, x2 * width / SCALE, y2 * height / SCALE)


def box_iou(boxes_a, boxes_b):
    """IoU matrix (numpy, ``len(a) x len(b)``) of 2D or 3D corner boxes, by ``monai.data.box_utils.box_iou``."""
    import numpy as np
    from monai.data.box_utils import box_iou as monai_box_iou

    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, len(boxes_a[0]) if len(boxes_a) else 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, a.shape[1])
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    return np.asarray(monai_box_iou(a, b), dtype=np.float64)


@dataclass
class SourceBoxes:
    """One entry of a row's ``boxes``: boxes in the source coordinates ``space`` of media reference ``media``."""

    name: str
    space: str
    coords: list[tuple[float, ...]]
    media: int | None = None


def row_boxes(row: dict, where: str) -> list[SourceBoxes]:
    """The checked entries of ``row["boxes"]`` (module docstring); ``MalformedBoxError(where)`` on any break."""
    import math

    spec = row.get("boxes")
    if spec is None:
        return []
    if not isinstance(spec, dict) or not spec:
        raise MalformedBoxError(where, "'boxes' must be a non-empty object {name: {space, coords}}")
    out = []
    for name, entry in spec.items():
        if not isinstance(name, str) or not re.fullmatch(_NAME, name):
            raise MalformedBoxError(where, f"boxes name {name!r}: use letters, digits, '_', '.', '-'")
        if not isinstance(entry, dict) or set(entry) - {"space", "coords", "media"} or "coords" not in entry:
            raise MalformedBoxError(where, f"boxes[{name!r}] must be {{\"space\", \"coords\"[, \"media\"]}}, "
                                           f"got {entry!r}")
        space, coords, media = entry.get("space"), entry["coords"], entry.get("media")
        if space not in SPACES:
            raise MalformedBoxError(where, f"boxes[{name!r}]: space {space!r}, expected one of {sorted(SPACES)}")
        if media is not None and (not isinstance(media, int) or isinstance(media, bool) or media < 0):
            raise MalformedBoxError(where, f"boxes[{name!r}]: media must be a reference index >= 0, got {media!r}")
        if not isinstance(coords, list) or not coords or not all(isinstance(c, list) for c in coords):
            raise MalformedBoxError(where, f"boxes[{name!r}]: coords must be a non-empty list of boxes [[...], ...]")
        dims = SPACES[space]
        boxes = []
        for c in coords:
            if len(c) != 2 * dims or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             and math.isfinite(v) for v in c):
                raise MalformedBoxError(where, f"boxes[{name!r}]: {c} is not {2 * dims} finite numbers "
                                               f"({space} boxes are {dims}D)")
            bad = [f"{a}1 > {a}2" for a, lo, hi in zip("xyz", c[:dims], c[dims:]) if lo > hi]
            if bad:
                raise MalformedBoxError(where, f"boxes[{name!r}]: {c}: {', '.join(bad)}")
            boxes.append(tuple(float(v) for v in c))
        out.append(SourceBoxes(name, space, boxes, media))
    return out


def named_box_refs(text: str) -> list[str]:
    """The names of the ``<box>name</box>`` references in ``text`` (in order)."""
    return _NAMED_BOX.findall(text or "")


def fill_box_refs(text: str, placed: dict[str, list], where: str, used: set | None = None) -> str:
    """``<box>name</box>`` -> ``<box>[[...]]</box>`` with ``placed[name]`` (0-1000 boxes); names it fills are
    added to ``used``. An unknown name is a ``MalformedBoxError(where)``."""
    def repl(m):
        name = m.group(1)
        if name not in placed:
            raise MalformedBoxError(where, f"<box>{name}</box> names no entry of the row's 'boxes' "
                                           f"({sorted(placed) or 'none'})")
        if used is not None:
            used.add(name)
        return format_grounded(placed[name])

    return _NAMED_BOX.sub(repl, text)


def check_in_view(lo_hi, sizes, what: str, axis_names: str = "xyz") -> None:
    """``BoxOutOfViewError`` if an edge interval ``(lo, hi)`` of ``lo_hi`` (one per axis, in the axes of
    ``sizes``) reaches more than ``BOX_VIEW_TOLERANCE`` outside ``0..size``, or is empty inside it."""
    from internvl.media.base import BoxOutOfViewError

    for axis, ((lo, hi), n) in enumerate(zip(lo_hi, sizes)):
        if lo < -BOX_VIEW_TOLERANCE or hi > n + BOX_VIEW_TOLERANCE or hi <= 0 or lo >= n:
            raise BoxOutOfViewError(f"{what}: spans {lo:.2f}..{hi:.2f} along {axis_names[axis]} but the field of view "
                                    f"is 0..{n:g} (box_out_of_view tolerance {BOX_VIEW_TOLERANCE})")


def normalize_edges(lo_hi, sizes, what: str) -> tuple[int, ...]:
    """Continuous edge intervals ``[(lo, hi)]`` per axis (x, y[, z]) of an array of ``sizes`` -> a 0-1000 box
    ``(x1, y1[, z1], x2, y2[, z2])``; ``check_in_view`` first, then clamped to the edges (within tolerance)."""
    check_in_view(lo_hi, sizes, what)
    lows = [round(min(max(lo, 0.0), n) / n * SCALE) for (lo, _), n in zip(lo_hi, sizes)]
    highs = [round(min(max(hi, 0.0), n) / n * SCALE) for (_, hi), n in zip(lo_hi, sizes)]
    return tuple(lows + highs)
