"""The ``image`` media kind: InternVL's dynamic-resolution tiling of 2D images into encoder tiles.

Grid rule (research note §4.1): among all ``cols x rows`` grids with ``min_num <= cols*rows <= max_num`` (ordered
by tile count), take the one whose ratio ``cols/rows`` is closest to the image's ``w/h``; on an exact tie a later
(larger) grid replaces the current one only if the image area exceeds half the grid's canvas
(``w*h > 0.5 * S^2 * cols*rows``). The whole image is resized (aspect distorted) to ``S*cols x S*rows``, cut
row-major into ``S x S`` tiles, and with ``use_thumbnail`` (and more than one tile) the whole image resized to
``S x S`` is appended last. Each tile is then normalised by ``build_transform``.

``ImageReader`` (registered as ``"image"``) reads one file into a list of tile tensors ``[3, S, S]``; S is the
model's tile size (``config.image_size``, i.e. ``force_image_size``). Options (from the finetune/eval flags and
per-dataset meta JSON): ``dynamic_image_size``, ``use_thumbnail``, ``min_dynamic_patch``, ``max_dynamic_patch``,
``normalize_type``, ``pad2square``. Files are decoded by ``to_rgb``: 16-bit / 32-bit / float grayscale is mapped
linearly from the image's own min..max onto 0..255 (never clipped), animated images are refused. Normalisation: an encoder whose config declares ``image_mean``/``image_std``
is normalised with those (it knows what it was trained with); otherwise ``normalize_type`` picks InternVL's
imagenet (default) / clip / siglip statistics.
"""
from __future__ import annotations

import io
import logging
import random
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from internvl.media.base import MediaError, MediaReader, register_media_reader
from internvl.constants import NORMALIZE_STATS

logger = logging.getLogger(__name__)


def candidate_grids(min_num: int, max_num: int) -> list[tuple[int, int]]:
    """All ``(cols, rows)`` with ``min_num <= cols*rows <= max_num``, ordered by tile count, then cols."""
    grids = {(c, r) for n in range(min_num, max_num + 1) for c in range(1, n + 1) for r in range(1, n + 1)
             if min_num <= c * r <= max_num}
    return sorted(grids, key=lambda g: (g[0] * g[1], g[0]))


def find_closest_aspect_ratio(aspect_ratio: float, grids: Sequence[tuple[int, int]], width: int, height: int,
                              image_size: int) -> tuple[int, int]:
    """The grid of ``grids`` for an image of ``width x height`` (ratio ``aspect_ratio``), InternVL's rule."""
    best_diff, best = float("inf"), (1, 1)
    area = width * height
    for cols, rows in grids:
        diff = abs(aspect_ratio - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and area > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def choose_grid(width: int, height: int, min_num: int = 1, max_num: int = 12, image_size: int = 448) -> tuple[int, int]:
    """``(cols, rows)`` that ``dynamic_preprocess`` uses for an image of this size."""
    return find_closest_aspect_ratio(width / height, candidate_grids(min_num, max_num), width, height, image_size)


def dynamic_preprocess(image: Image.Image, min_num: int = 1, max_num: int = 12, image_size: int = 448,
                       use_thumbnail: bool = False) -> list[Image.Image]:
    """Tile ``image`` by the grid rule; returns ``cols*rows`` tiles (+ the thumbnail, last, when asked)."""
    width, height = image.size
    cols, rows = choose_grid(width, height, min_num, max_num, image_size)
    resized = image.resize((image_size * cols, image_size * rows))
    tiles = []
    for i in range(cols * rows):
        left, top = (i % cols) * image_size, (i // cols) * image_size
        tiles.append(resized.crop((left, top, left + image_size, top + image_size)))
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((image_size, image_size)))
    return tiles


class ToRGB:
    """Convert a PIL image to RGB (a class, not a lambda, so transforms pickle into DataLoader workers)."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == "RGB" else img.convert("RGB")


class RandomJPEG:
    """InternVL's training augmentation: re-encode as JPEG at a quality drawn uniformly from [lo, hi]."""

    def __init__(self, quality: tuple[int, int] = (75, 100)):
        self.quality = quality

    def __call__(self, img: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=random.randint(*self.quality))
        buf.seek(0)
        return Image.open(buf).convert("RGB")


class PadToSquare:
    """Pad to a square canvas filled with the normalisation mean colour (InternVL's ``pad2square``)."""

    def __init__(self, mean: Sequence[float]):
        self.fill = tuple(int(round(m * 255)) for m in mean)

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if w == h:
            return img
        side = max(w, h)
        canvas = Image.new(img.mode, (side, side), self.fill)
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        return canvas


def normalize_stats(normalize_type: str = "imagenet") -> tuple[tuple[float, ...], tuple[float, ...]]:
    if normalize_type not in NORMALIZE_STATS:
        raise ValueError(f"unknown normalize_type {normalize_type!r}; expected one of {sorted(NORMALIZE_STATS)}")
    return NORMALIZE_STATS[normalize_type]


def build_transform(is_train: bool, input_size: int, normalize_type: str = "imagenet", *,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                    pad2square: bool = False) -> T.Compose:
    """PIL tile -> normalised ``[3, input_size, input_size]`` tensor.

    RGB -> (train: random JPEG quality 75-100) -> (pad2square) -> bicubic resize -> tensor -> normalise.
    ``mean``/``std`` override the ``normalize_type`` statistics.
    """
    if mean is None or std is None:
        mean, std = normalize_stats(normalize_type)
    steps: list[Any] = [ToRGB()]
    if is_train:
        steps.append(RandomJPEG())
    if pad2square:
        steps.append(PadToSquare(mean))
    steps += [T.Resize((input_size, input_size), interpolation=InterpolationMode.BICUBIC), T.ToTensor(),
              T.Normalize(mean=tuple(mean), std=tuple(std))]
    return T.Compose(steps)


def to_rgb(img: Image.Image, path: str) -> Image.Image:
    """RGB from any PIL mode, with high bit depths mapped, never clipped.

    Grayscale deeper than 8 bits (``I;16``/``I;16B``/``I;16L``/``I`` integers, ``F`` floats; common in medical PNG and
    TIFF exports) is mapped linearly from the image's own min..max onto 0..255 (a constant image becomes 0): PIL's
    ``convert("RGB")`` would clip every value above 255 to white. Animated images are refused (which frame is meant
    is not ours to guess).
    """
    if getattr(img, "n_frames", 1) > 1:
        raise MediaError(f"{path}: animated image with {img.n_frames} frames; export the frame you mean as a still")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        img = Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")
    return img if img.mode == "RGB" else img.convert("RGB")


def open_image(path: str) -> Image.Image:
    """Open and decode an image file as RGB (``to_rgb``); ``MediaError`` naming the file if it is missing,
    unreadable or animated."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img, path)
    except FileNotFoundError as exc:
        raise MediaError(f"{path}: file not found") from exc
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc


def load_image(path: str, *, input_size: int = 448, max_num: int = 12, min_num: int = 1,
               use_thumbnail: bool = False, dynamic: bool = True, is_train: bool = False,
               normalize_type: str = "imagenet", mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, pad2square: bool = False) -> torch.Tensor:
    """Read ``path`` into normalised tiles ``Tensor [n_tiles, 3, input_size, input_size]`` (model-card helper)."""
    image = open_image(path)
    transform = build_transform(is_train, input_size, normalize_type, mean=mean, std=std, pad2square=pad2square)
    tiles = dynamic_preprocess(image, min_num, max_num, input_size, use_thumbnail) if dynamic else [image]
    return torch.stack([transform(t) for t in tiles])


@register_media_reader("image")
class ImageReader(MediaReader):
    """2D images (any format PIL reads) -> dynamic-resolution tiles ``[3, S, S]``, ``S = config.image_size``."""

    kind = "image"
    placeholder = "<image>"
    is_file = True
    option_names = frozenset({"dynamic_image_size", "use_thumbnail", "min_dynamic_patch", "max_dynamic_patch",
                              "normalize_type", "pad2square"})

    def __init__(self, config, options: dict[str, Any] | None = None):
        super().__init__(config, options)
        opt = self.options
        self.image_size = int(config.image_size)
        def setting(name):  # the option when given, else the model config's value (the one default)
            value = opt.get(name)
            return getattr(config, name) if value is None else value

        self.dynamic = bool(setting("dynamic_image_size"))
        self.use_thumbnail = bool(setting("use_thumbnail"))
        self.min_num = int(setting("min_dynamic_patch"))
        self.max_num = int(setting("max_dynamic_patch"))
        self.pad2square = bool(setting("pad2square"))
        vcfg = config.vision_config
        mean, std = getattr(vcfg, "image_mean", None), getattr(vcfg, "image_std", None)
        if mean is not None and std is not None:  # the encoder declares its own statistics: they win
            self.mean, self.std = tuple(mean), tuple(std)
        else:
            self.mean, self.std = normalize_stats(opt.get("normalize_type") or "imagenet")
        self._transforms = {flag: build_transform(flag, self.image_size, mean=self.mean, std=self.std,
                                                  pad2square=self.pad2square) for flag in (False, True)}

    def tiles(self, path: str, max_num: int | None = None) -> list[Image.Image]:
        """The PIL tiles of one image (before normalisation)."""
        image = open_image(path)
        if not self.dynamic:
            return [image]
        return dynamic_preprocess(image, self.min_num, max_num or self.max_num, self.image_size, self.use_thumbnail)

    def load(self, ref: Any, *, is_train: bool = False, max_num: int | None = None) -> list[torch.Tensor]:
        if not isinstance(ref, str):
            raise MediaError(f"{ref!r}: an image reference must be a path string")
        transform = self._transforms[bool(is_train)]
        return [transform(t) for t in self.tiles(ref, max_num)]

    def load_many(self, refs: list[Any], *, is_train: bool = False) -> list[list[torch.Tensor]]:
        """Several images of one row share the tile budget: each gets ``max(1, max_dynamic_patch // n)`` tiles."""
        per_image = max(1, self.max_num // max(len(refs), 1))
        return [self.load(r, is_train=is_train, max_num=per_image) for r in refs]

    def max_items(self) -> int:
        return self.max_num + int(self.use_thumbnail and self.max_num > 1) if self.dynamic else 1

    def item_shapes_many(self, refs: list[Any]) -> list[list[torch.Size]]:
        """Tile counts from the image headers (no decoding), with ``load_many``'s shared tile budget."""
        per_image = max(1, self.max_num // max(len(refs), 1))
        shape = torch.Size((3, self.image_size, self.image_size))
        out = []
        for ref in refs:
            if not isinstance(ref, str):
                raise MediaError(f"{ref!r}: an image reference must be a path string")
            n = 1
            if self.dynamic:
                try:
                    with Image.open(ref) as img:
                        width, height = img.size
                except FileNotFoundError as exc:
                    raise MediaError(f"{ref}: file not found") from exc
                except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
                    raise MediaError(f"{ref}: cannot read image ({type(exc).__name__}: {exc})") from exc
                cols, rows = choose_grid(width, height, self.min_num, per_image, self.image_size)
                n = cols * rows + int(self.use_thumbnail and cols * rows != 1)
            out.append([shape] * n)
        return out

    def check(self, ref: Any) -> None:
        """Cheap validation: the file exists and PIL can identify and verify it (no decoding)."""
        if not isinstance(ref, str):
            raise MediaError(f"{ref!r}: an image reference must be a path string")
        try:
            with Image.open(ref) as img:
                if getattr(img, "n_frames", 1) > 1:
                    raise MediaError(f"{ref}: animated image with {img.n_frames} frames; export the frame you mean")
                img.verify()
        except FileNotFoundError as exc:
            raise MediaError(f"{ref}: file not found") from exc
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise MediaError(f"{ref}: cannot read image ({type(exc).__name__}: {exc})") from exc


__all__ = ["ImageReader", "build_transform", "candidate_grids", "choose_grid", "dynamic_preprocess",
           "find_closest_aspect_ratio", "load_image", "normalize_stats", "open_image"]
