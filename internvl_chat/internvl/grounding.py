"""The one box grammar of grounded text: parse, check, write and compare 2D and 3D boxes.

2D (InternVL's own format): ``<ref>phrase</ref><box>[[x1, y1, x2, y2], [x1, y1, x2, y2], ...]</box>``. Numbers are
on 0-1000 relative to the *original* image (``round(x / W * 1000)``, ``round(y / H * 1000)``; x to the right, y
down), so they do not depend on tiling. Several objects are several ``<ref>..</ref><box>..</box>`` groups; the
``<ref>`` is optional (a bare ``<box>`` has phrase ``None``).

3D (volumes): ``<ref>phrase</ref><box>[[x1, y1, z1, x2, y2, z2]]</box>`` on 0-1000 in the frame of the
*preprocessed* volume array (after reorientation, resampling and crop/pad): x along the array's first spatial
axis, y along the second, z along the third; 0 is the start edge of the first voxel and 1000 the end edge of the
last. For volumes reoriented to RAS+ that is x towards the patient's Right, y Anterior, z Superior.

A box is a tuple ``(x1, y1, x2, y2)`` or ``(x1, y1, z1, x2, y2, z2)`` with every number in 0..1000 and each min
<= its max. ``parse_grounded`` is strict (for data: any malformed ``<box>`` raises ``MalformedBoxError`` naming
``file:line``); ``parse_answer`` is lenient (for model answers: tags optional, surrounding text ignored, candidate
boxes that break a rule are counted in ``n_malformed``, never repaired). ``box_iou`` is MONAI's (2D and 3D).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from internvl.errors import DataError

MALFORMED_BOX = "malformed_box"
SCALE = 1000

_NUM = r"-?\d+(?:\.\d+)?"
_GROUP = re.compile(r"(?:<ref>(.*?)</ref>\s*)?<box>(.*?)</box>", re.DOTALL)
_LIST = re.compile(r"\[([^\[\]]*)\]")
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
