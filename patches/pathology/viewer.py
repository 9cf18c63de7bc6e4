"""The ``wsi`` viewer for the web demo and the HTML report: pan and zoom over OpenSlide Deep Zoom tiles, with the
tissue grid (the tiles the reader would encode) drawn on top.

A view is assembled from ``openslide.deepzoom.DeepZoomGenerator`` tiles at the coarsest Deep Zoom level that still
gives ``state.size`` pixels across the visible region, so zooming in reads finer levels only for what is on
screen. The grid is ``wsi.plan_tiles`` at 0.5 µm/px with the default tissue mask, in level-0 coordinates; when the
slide has no plausible scale the view still renders and ``info`` says why there is no grid.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from internvl.serve.viewers import MediaViewer, ViewerError, ViewState, crop_box, register_viewer
from patches.pathology.wsi import SLIDE_EXTENSIONS, SlideError

GRID_MPP = 0.5
DZ_TILE = 254


@dataclass
class SlideView:
    path: str
    slide: object            # openslide.OpenSlide
    deepzoom: object         # openslide.deepzoom.DeepZoomGenerator
    grid: list               # [(x, y, size)] level-0 tissue tiles
    note: str

    def close(self) -> None:
        self.slide.close()


@register_viewer("wsi")
class SlideViewer(MediaViewer):
    kind = "wsi"
    controls = ("zoom", "pan", "overlay")
    priority = 10

    def accepts(self, path: str) -> bool:
        import openslide

        if not (os.path.isfile(path) and path.lower().endswith(SLIDE_EXTENSIONS)):
            return False
        return openslide.OpenSlide.detect_format(path) is not None

    def open(self, path: str) -> SlideView:
        from openslide.deepzoom import DeepZoomGenerator

        from patches.pathology.wsi import open_slide, plan_tiles, slide_info

        try:
            slide = open_slide(path)
        except SlideError as exc:
            raise ViewerError(str(exc)) from exc
        grid, note = [], ""
        try:
            info = slide_info(slide, path)
            plan = plan_tiles(slide, info, max(GRID_MPP, info.mpp))
            grid = [(int(x), int(y), plan.tile_size_level0) for x, y in plan.coords]
            note = f"{len(grid)} tissue tiles of {plan.n_grid} at {plan.target_mpp:g} µm/px"
        except SlideError as exc:
            note = f"no tissue grid: {exc}"
        return SlideView(path, slide, DeepZoomGenerator(slide, tile_size=DZ_TILE, overlap=1, limit_bounds=False), grid,
                         note)

    def info(self, handle: SlideView) -> str:
        w, h = handle.slide.dimensions
        return f"slide {w}x{h}, {handle.slide.level_count} levels, {handle.deepzoom.level_count} Deep Zoom levels; " \
               f"{handle.note}"

    @staticmethod
    def _tile(handle: SlideView, level: int, col: int, row: int):
        import openslide

        try:
            return handle.deepzoom.get_tile(level, (col, row)).convert("RGB")
        except openslide.OpenSlideError as exc:
            raise ViewerError(f"{handle.path}: Deep Zoom tile ({col}, {row}) of level {level} unreadable: {exc}") \
                from exc

    def render(self, handle: SlideView, state: ViewState):
        from PIL import Image, ImageDraw

        dz = handle.deepzoom
        w0, h0 = handle.slide.dimensions
        box0 = crop_box(w0, h0, state)  # visible region, level-0 pixels
        wanted = state.size / max(box0[2] - box0[0], box0[3] - box0[1])
        level = dz.level_count - 1
        for lvl, (lw, _) in enumerate(dz.level_dimensions):
            if lw / w0 >= min(wanted, 1.0):
                level = lvl
                break
        scale = dz.level_dimensions[level][0] / w0
        left, top = box0[0] * scale, box0[1] * scale
        right, bottom = box0[2] * scale, box0[3] * scale
        cols, rows = dz.level_tiles[level]
        c0, c1 = int(left // DZ_TILE), min(cols - 1, int(math.ceil(right / DZ_TILE)) - 1)
        r0, r1 = int(top // DZ_TILE), min(rows - 1, int(math.ceil(bottom / DZ_TILE)) - 1)
        canvas = Image.new("RGB", (max(1, round(right - left)), max(1, round(bottom - top))), "white")
        for col in range(c0, max(c0, c1) + 1):
            for row in range(r0, max(r0, r1) + 1):
                tile = self._tile(handle, level, col, row)
                x = col * DZ_TILE - (1 if col else 0) - left  # tiles after the first carry a 1 px overlap
                y = row * DZ_TILE - (1 if row else 0) - top
                canvas.paste(tile, (round(x), round(y)))
        out_scale = state.size / max(canvas.size)
        view = canvas.resize((max(1, round(canvas.width * out_scale)), max(1, round(canvas.height * out_scale))))
        if state.overlay and handle.grid:
            draw = ImageDraw.Draw(view)
            k = scale * out_scale
            for x, y, s in handle.grid:
                draw.rectangle([(x * scale - left) * out_scale, (y * scale - top) * out_scale,
                                (x * scale - left) * out_scale + s * k, (y * scale - top) * out_scale + s * k],
                               outline=(0, 200, 0), width=2)
        return view
