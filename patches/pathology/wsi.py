"""Whole-slide images through OpenSlide: scale, level choice, tissue grid and tile reads with bad-tile handling.

What a feature extractor needs from a slide, and nothing more:

* ``SlideInfo``: microns per pixel and objective power read from the slide properties with fallbacks (OpenSlide's
  normalised ``openslide.mpp-x``, then vendor keys, the Aperio comment, the TIFF resolution tags, and finally
  ``10 / objective-power``). An implausible scale (for example the 352.8 µm/px that a 72-dpi default TIFF tag gives)
  is an error naming the file, unless the caller supplies ``slide_mpp``.
* ``plan_tiles``: the level to read, the size to read there and the level-0 footprint of a ``tile_size`` tile at the
  target mpp (20x = 0.5 µm/px by default), plus the grid of level-0 top-left coordinates kept by the tissue mask
  (``tissue.py``).
* ``TileReader``: reads tiles as RGB uint8; OpenSlide errors are sticky per handle, so on a failed read the handle is
  closed and reopened and the read retried once. A tile that still fails is returned as a ``BadTile`` with its
  coordinates and the error; callers count them against a budget and report them, never replace them.

The module never falls back to ``openslide.open_slide`` (it would silently hand a truncated TIFF to PIL); a file
OpenSlide cannot open raises ``SlideError`` with the file and OpenSlide's reason.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field

import numpy as np
import openslide
from PIL import Image

from patches.pathology.slide_list import SLIDE_EXTENSIONS  # noqa: F401  (re-exported)
from patches.pathology.tissue import TissueParams, tile_tissue_fraction, tissue_mask

# µm/px outside this range is not a microscope scale (72-dpi default TIFF tags give 352.8)
PLAUSIBLE_MPP = (0.05, 16.0)
LEVEL_TOLERANCE = 0.02  # a level whose downsample is within 2 % of the wanted one is read without resizing


class SlideError(Exception):
    """A slide that cannot be opened, scaled or tiled; the message names the file (and coordinates if any)."""


@dataclass
class SlideInfo:
    path: str
    vendor: str
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float
    mpp_source: str
    objective_power: float | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TilePlan:
    """How to cut a slide into ``tile_size`` tiles at ``target_mpp`` (all coordinates level-0 pixels)."""

    target_mpp: float
    tile_size: int
    level: int
    level_downsample: float
    read_size: int            # pixels read at ``level`` (then resized to tile_size when different)
    tile_size_level0: int     # footprint of one tile in level-0 pixels (= grid stride, no overlap)
    coords: np.ndarray        # [N, 2] int64 (x, y) top-left, level 0
    tissue_threshold: float   # saturation threshold used (0..255), nan when no mask
    tissue_fractions: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.float32))
    n_grid: int = 0           # tiles in the full grid before tissue filtering

    def attrs(self) -> dict:
        return {"target_mpp": self.target_mpp, "tile_size": self.tile_size, "level": self.level,
                "level_downsample": self.level_downsample, "read_size": self.read_size,
                "tile_size_level0": self.tile_size_level0, "tissue_threshold": self.tissue_threshold,
                "n_grid": self.n_grid}


@dataclass
class BadTile:
    x: int
    y: int
    error: str

    def __str__(self) -> str:
        return f"tile at level-0 ({self.x}, {self.y}): {self.error}"


def open_slide(path: str) -> openslide.OpenSlide:
    """OpenSlide handle or ``SlideError`` (format not recognised, unsupported compression, missing file ...)."""
    if not os.path.exists(path):
        raise SlideError(f"{path}: file not found")
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise SlideError(f"{path}: not a whole-slide image OpenSlide can read ({exc}); "
                         f"plain images (PNG/JPEG) go through the 'image' media kind") from exc
    except openslide.OpenSlideError as exc:
        raise SlideError(f"{path}: OpenSlide cannot open it: {exc}") from exc


def _float(props, key: str) -> float | None:
    value = props.get(key)
    if value is None:
        return None
    try:
        out = float(value)
    except ValueError:
        return None
    return out if math.isfinite(out) and out > 0 else None


def _mpp_from_properties(props) -> tuple[float | None, str]:
    for key in ("openslide.mpp-x", "aperio.MPP", "openslide.mirax.MPP", "mirax.GENERAL.SLIDE_RESOLUTION"):
        value = _float(props, key)
        if value:
            return value, key
    match = re.search(r"MPP\s*=\s*([0-9.]+)", props.get("openslide.comment", "") or "")
    if match and float(match.group(1)) > 0:
        return float(match.group(1)), "openslide.comment MPP"
    xres, unit = _float(props, "tiff.XResolution"), (props.get("tiff.ResolutionUnit") or "").lower()
    if xres and unit in ("centimeter", "inch"):
        return (1e4 if unit == "centimeter" else 25400.0) / xres, f"tiff.XResolution ({unit})"
    power = _float(props, "openslide.objective-power")
    if power:
        return 10.0 / power, "10 / openslide.objective-power"
    return None, ""


def magnification_from_mpp(mpp: float) -> float:
    """Nominal objective power for a scale, by the usual buckets (0.25 µm/px ~ 40x, 0.5 ~ 20x, 1.0 ~ 10x)."""
    for limit, mag in ((0.16, 80), (0.2, 60), (0.3, 40), (0.6, 20), (1.2, 10), (2.4, 5)):
        if mpp < limit:
            return float(mag)
    return round(10.0 / mpp, 2)


def slide_info(handle: openslide.OpenSlide, path: str, slide_mpp: float | None = None) -> SlideInfo:
    props = handle.properties
    if slide_mpp is not None:
        mpp, source = float(slide_mpp), "given by caller"
    else:
        mpp, source = _mpp_from_properties(props)
        if mpp is None:
            raise SlideError(f"{path}: no scale in the slide properties (openslide.mpp-x, aperio.MPP, TIFF resolution, "
                             f"objective power); pass the slide's µm/px explicitly (--slide-mpp)")
    if not PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]:
        raise SlideError(f"{path}: scale {mpp:.4g} µm/px from {source} is not a microscope scale "
                         f"(plausible {PLAUSIBLE_MPP[0]}..{PLAUSIBLE_MPP[1]}; a 72-dpi default TIFF tag gives 352.8); "
                         f"pass the real µm/px with --slide-mpp")
    power = _float(props, "openslide.objective-power")
    return SlideInfo(path=str(path), vendor=props.get("openslide.vendor", "unknown"),
                     dimensions=tuple(handle.dimensions), level_dimensions=tuple(handle.level_dimensions),
                     level_downsamples=tuple(float(d) for d in handle.level_downsamples), mpp=mpp,
                     mpp_source=source, objective_power=power)


def target_mpp_for(info: SlideInfo, mpp: float | None = None, magnification: float | None = None) -> float:
    """The µm/px to tile at: given directly, or from a magnification (relative to the slide's own objective power
    when the slide states one, else by the 10 / magnification convention: 20x = 0.5 µm/px)."""
    if (mpp is None) == (magnification is None):
        raise ValueError("give exactly one of mpp or magnification")
    if mpp is not None:
        return float(mpp)
    if info.objective_power:
        return info.mpp * info.objective_power / float(magnification)
    return 10.0 / float(magnification)


def choose_level(info: SlideInfo, downsample: float) -> int:
    """The coarsest level whose downsample does not exceed the wanted one (within tolerance): never upsample."""
    best = 0
    for level, level_ds in enumerate(info.level_downsamples):
        if level_ds <= downsample * (1 + LEVEL_TOLERANCE):
            best = level
    return best


def plan_tiles(handle: openslide.OpenSlide, info: SlideInfo, target_mpp: float, tile_size: int = 224,
               tissue: TissueParams | None = None, allow_upsample: bool = False) -> TilePlan:
    """Level, read size, level-0 footprint and the tissue-filtered grid for one slide."""
    downsample = target_mpp / info.mpp
    if downsample < 1 - LEVEL_TOLERANCE and not allow_upsample:
        raise SlideError(f"{info.path}: target {target_mpp:g} µm/px is finer than the slide's level 0 "
                         f"({info.mpp:g} µm/px); tiles would be upsampled. Choose a coarser --mpp")
    level = choose_level(info, downsample)
    level_ds = info.level_downsamples[level]
    exact = abs(level_ds - downsample) <= LEVEL_TOLERANCE * downsample
    read_size = tile_size if exact else int(round(tile_size * downsample / level_ds))
    footprint = int(round(tile_size * (level_ds if exact else downsample)))
    width, height = info.dimensions
    xs = np.arange(0, width - footprint + 1, footprint, dtype=np.int64)
    ys = np.arange(0, height - footprint + 1, footprint, dtype=np.int64)
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2) if len(xs) and len(ys) else np.zeros((0, 2), np.int64)
    tissue = tissue or TissueParams()
    if tissue.method == "none" or len(grid) == 0:
        fractions, threshold = np.ones(len(grid), np.float32), float("nan")
        keep = np.ones(len(grid), bool)
    else:
        try:
            mask, scale, threshold = tissue_mask(handle, info.mpp, tissue)
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{info.path}: reading the low-resolution level for the tissue mask failed "
                             f"(region (0, 0)-{info.dimensions} at level 0 scale): {exc}") from exc
        fractions = tile_tissue_fraction(mask, scale, grid, footprint)
        keep = fractions >= tissue.min_tile_fraction
    return TilePlan(target_mpp=float(target_mpp), tile_size=int(tile_size), level=int(level),
                    level_downsample=float(level_ds), read_size=int(read_size), tile_size_level0=int(footprint),
                    coords=grid[keep], tissue_threshold=float(threshold), tissue_fractions=fractions[keep],
                    n_grid=int(len(grid)))


class TileReader:
    """Reads planned tiles from one slide; one instance per process/worker (OpenSlide handles are not shared)."""

    read_errors: tuple = (openslide.OpenSlideError,)

    def __init__(self, path: str, plan: TilePlan):
        self.path = str(path)
        self.plan = plan
        self._handle: openslide.OpenSlide | None = None
        self.reopened = 0

    @property
    def handle(self) -> openslide.OpenSlide:
        if self._handle is None:
            self._handle = open_slide(self.path)
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _read(self, x: int, y: int) -> np.ndarray:
        p = self.plan
        region = self.handle.read_region((int(x), int(y)), p.level, (p.read_size, p.read_size))
        tile = region.convert("RGB")
        if p.read_size != p.tile_size:
            tile = tile.resize((p.tile_size, p.tile_size), Image.Resampling.BICUBIC)
        return np.asarray(tile, dtype=np.uint8)

    def read(self, x: int, y: int) -> np.ndarray | BadTile:
        """RGB uint8 [tile, tile, 3], or a ``BadTile`` after one retry on a fresh handle."""
        try:
            return self._read(x, y)
        except self.read_errors as first:
            self.close()  # errors are sticky on a handle: a fresh one reads good regions again
            self.reopened += 1
            try:
                return self._read(x, y)
            except self.read_errors as second:
                self.close()
                return BadTile(int(x), int(y), f"{second} (first attempt: {first})")

    def read_batch(self, coords) -> tuple[list[np.ndarray], list[int], list[BadTile]]:
        """Read several tiles; returns (good tiles, their indices in ``coords``, bad tiles)."""
        tiles, index, bad = [], [], []
        for i, (x, y) in enumerate(coords):
            out = self.read(x, y)
            if isinstance(out, BadTile):
                bad.append(out)
            else:
                tiles.append(out)
                index.append(i)
        return tiles, index, bad

    def __getstate__(self):  # picklable for DataLoader workers: each worker opens its own handle
        state = dict(self.__dict__)
        state["_handle"] = None
        return state


class CuCIMTileReader(TileReader):
    """The same reads through cuCIM (``pip install cucim-cu12``; TIFF-family files such as .svs/.tif only).

    ``CuImage.read_region`` takes the level-0 location like OpenSlide and returns RGB; the rest (resize, bad-tile
    retry on a fresh handle) is ``TileReader``'s.
    """

    read_errors = (RuntimeError, ValueError)

    @property
    def handle(self):
        if self._handle is None:
            from cucim import CuImage

            try:
                self._handle = CuImage(self.path)
            except (RuntimeError, ValueError) as exc:
                raise SlideError(f"{self.path}: cuCIM cannot open it: {exc}") from exc
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _read(self, x: int, y: int) -> np.ndarray:
        p = self.plan
        region = np.asarray(self.handle.read_region(location=(int(x), int(y)), size=(p.read_size, p.read_size),
                                                    level=p.level))[..., :3]
        if p.read_size != p.tile_size:
            region = np.asarray(Image.fromarray(region).resize((p.tile_size, p.tile_size),
                                                               Image.Resampling.BICUBIC))
        return np.ascontiguousarray(region, dtype=np.uint8)


def make_tile_reader(kind: str, path: str, plan: TilePlan) -> TileReader:
    """``openslide`` (default) or ``cucim`` (an error saying how to install it when it is missing)."""
    if kind == "openslide":
        return TileReader(path, plan)
    if kind == "cucim":
        import importlib.util

        if importlib.util.find_spec("cucim") is None:
            raise SlideError("--reader cucim: cuCIM is not installed (pip install cucim-cu12, or cucim-cu11 / "
                             "cucim-cu13 for your CUDA); or use --reader openslide")
        return CuCIMTileReader(path, plan)
    raise ValueError(f"unknown tile reader {kind!r}; one of openslide, cucim")
