"""Media viewers: how the web demo and the HTML report show what a model reads, one registered viewer per kind.

The core registers the ``image`` viewer; plugins register theirs on import (the pathology plugin ``wsi``, the
neuro plugin ``volume``), exactly like media readers, so the core never names a plugin. Nothing here imports
Gradio: the HTML report uses ``thumbnail`` without the web stack.

Contract (``MediaViewer``):

* class attributes ``kind`` (the media kind / row key it shows), ``controls`` (which of the demo's generic
  controls apply: ``"zoom"``, ``"pan"``, ``"slice"``, ``"window"``, ``"overlay"``), ``window_presets`` (names
  for the ``window`` control), ``priority`` (higher is asked first by ``viewer_for_path``).
* ``accepts(path) -> bool``: a cheap check that this viewer can show the file or folder (suffix, magic bytes).
* ``open(path) -> handle``: raises ``ViewerError`` naming the file.
* ``render(handle, state: ViewState) -> PIL.Image`` (RGB): the view for the demo's current controls.
* ``info(handle) -> str``: one line about the media (size, levels, spacing ...); ``default_window(handle)``: the
  preset a freshly opened view uses (default: the first of ``window_presets``, or ``None``).
* ``close(handle)``; ``thumbnail(path, size)``: the default view scaled into ``size`` x ``size``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from internvl.registry import Registry

VIEWERS = Registry("media viewer")
CONTROLS = ("zoom", "pan", "slice", "window", "overlay")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ViewerError(Exception):
    """Media a viewer cannot show; the message names the file."""


@dataclass
class ViewState:
    zoom: float = 1.0            # 1 = the whole image/slide in view
    center: tuple[float, float] = (0.5, 0.5)  # view centre, fractions of width and height
    slice: float = 0.5           # position along each volume axis, fraction 0..1
    window: str | None = None    # a name from the viewer's window_presets
    overlay: bool = True         # draw the viewer's overlay (tissue grid, boxes)
    size: int = 512              # longest side of the rendered view, pixels


def register_viewer(kind: str):
    """Decorator: register a ``MediaViewer`` subclass for media kind ``kind``."""
    return VIEWERS.register(kind)


class MediaViewer:
    kind: str = ""
    controls: tuple[str, ...] = ()
    window_presets: tuple[str, ...] = ()
    priority: int = 0

    def accepts(self, path: str) -> bool:
        raise NotImplementedError

    def open(self, path: str) -> Any:
        raise NotImplementedError

    def render(self, handle: Any, state: ViewState):
        raise NotImplementedError

    def info(self, handle: Any) -> str:
        return ""

    def default_window(self, handle: Any) -> str | None:
        return self.window_presets[0] if self.window_presets else None

    def close(self, handle: Any) -> None:
        close = getattr(handle, "close", None)
        if callable(close):
            close()

    def thumbnail(self, path: str, size: int = 160):
        handle = self.open(path)
        try:
            img = self.render(handle, ViewState(size=max(size, 64)))
        finally:
            self.close(handle)
        img.thumbnail((size, size))
        return img


def create_viewer(kind: str) -> MediaViewer:
    return VIEWERS.get(kind)()


def viewer_for_path(path: str) -> MediaViewer:
    """The highest-priority registered viewer that accepts ``path``; ``ViewerError`` when none does."""
    if not os.path.exists(path):
        raise ViewerError(f"{path}: file not found")
    viewers = sorted((cls() for _, cls in VIEWERS.items()), key=lambda v: -v.priority)
    for viewer in viewers:
        if viewer.accepts(path):
            return viewer
    raise ViewerError(f"{path}: no registered viewer shows this file (kinds: {', '.join(VIEWERS.names())})")


def crop_box(width: int, height: int, state: ViewState) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) pixel box the state's zoom and centre select, clamped inside the image."""
    zoom = max(1.0, float(state.zoom))
    w, h = max(1, round(width / zoom)), max(1, round(height / zoom))
    cx, cy = state.center[0] * width, state.center[1] * height
    left = int(min(max(0, round(cx - w / 2)), width - w))
    top = int(min(max(0, round(cy - h / 2)), height - h))
    return left, top, left + w, top + h


@register_viewer("image")
class ImageViewer(MediaViewer):
    """Plain images (PIL): zoom and pan by cropping."""

    kind = "image"
    controls = ("zoom", "pan")
    priority = -10  # plugins that read TIFF/DICOM slides are asked first

    def accepts(self, path: str) -> bool:
        return os.path.isfile(path) and path.lower().endswith(IMAGE_SUFFIXES)

    def open(self, path: str):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise ViewerError(f"{path}: not an image PIL can read ({exc})") from exc

    def render(self, handle, state: ViewState):
        view = handle.crop(crop_box(handle.width, handle.height, state))
        scale = state.size / max(view.size)
        return view.resize((max(1, round(view.width * scale)), max(1, round(view.height * scale))))

    def info(self, handle) -> str:
        return f"image {handle.width}x{handle.height}"
