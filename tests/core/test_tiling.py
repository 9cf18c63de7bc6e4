"""Dynamic tiling: InternVL's grid rule (note §4.1) incl. the area tie-break, tile geometry, transforms, reader."""
import itertools

import pytest
import torch
from PIL import Image

from internvl.media import MediaError, reader_for_key
from internvl.media.image import (ImageReader, build_transform, choose_grid, dynamic_preprocess, load_image,
                                  normalize_stats)
from internvl.constants import CLIP_MEAN, IMAGENET_MEAN, IMAGENET_STD, SIGLIP_STD

# (w, h): (grid, tiles incl. thumbnail) for max 6 and max 12 -- the note's verified table
TABLE = {
    (224, 224): (((1, 1), 1), ((1, 1), 1)),
    (448, 448): (((1, 1), 1), ((1, 1), 1)),
    (512, 512): (((1, 1), 1), ((1, 1), 1)),
    (1024, 1024): (((2, 2), 5), ((3, 3), 10)),
    (1024, 768): (((3, 2), 7), ((4, 3), 13)),
    (1920, 1080): (((2, 1), 3), ((4, 2), 9)),
    (3000, 2000): (((3, 2), 7), ((3, 2), 7)),
    (800, 2400): (((1, 3), 4), ((2, 6), 13)),
}


@pytest.mark.parametrize("size", sorted(TABLE))
def test_note_table(size):
    for max_num, (grid, tiles) in zip((6, 12), TABLE[size]):
        assert choose_grid(*size, 1, max_num, 448) == grid
        n = grid[0] * grid[1]
        assert n + (1 if n > 1 else 0) == tiles


def rule_from_note(w, h, min_num, max_num, size):
    """The note's rule, written independently: all grids with the smallest |w/h - c/r| (by tile count);
    a later tied grid wins only if the image area exceeds half its canvas; the last such winner stands."""
    grids = [(c, r) for c in range(1, max_num + 1) for r in range(1, max_num + 1) if min_num <= c * r <= max_num]
    grids.sort(key=lambda g: g[0] * g[1])
    diffs = [abs(w / h - c / r) for c, r in grids]
    best = min(diffs)
    ties = [g for g, d in zip(grids, diffs) if d == best]
    later = [g for g in ties[1:] if w * h > 0.5 * size * size * g[0] * g[1]]
    return later[-1] if later else ties[0]


def test_sweep_matches_rule():
    sides = list(range(16, 4000, 83)) + [448, 896, 1344, 224, 112]
    n_ties = 0
    for (w, h), max_num, min_num in itertools.product(itertools.product(sides, sides), (1, 4, 6, 12), (1, 2)):
        if min_num > max_num:
            continue
        got = choose_grid(w, h, min_num, max_num, 448)
        assert got == rule_from_note(w, h, min_num, max_num, 448), (w, h, min_num, max_num)
        n_ties += w == h  # squares tie between 1x1, 2x2, 3x3
    assert n_ties > 0


def test_area_tie_break_on_squares():
    # 1x1, 2x2, 3x3 tie for a square; larger grids need the area to exceed half the canvas
    assert choose_grid(512, 512, 1, 12, 448) == (1, 1)  # 512^2 < 0.5 * 448^2 * 4
    assert choose_grid(640, 640, 1, 12, 448) == (2, 2)  # > half of 2x2, < half of 3x3
    assert choose_grid(1000, 1000, 1, 12, 448) == (3, 3)


def test_tiles_row_major_and_thumbnail_last():
    s = 8
    img = Image.new("RGB", (2 * s, 2 * s))
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]  # TL, TR, BL, BR
    for i, color in enumerate(colors):
        img.paste(color, ((i % 2) * s, (i // 2) * s, (i % 2 + 1) * s, (i // 2 + 1) * s))
    tiles = dynamic_preprocess(img, 1, 4, image_size=s, use_thumbnail=True)
    assert len(tiles) == 5 and all(t.size == (s, s) for t in tiles)
    for tile, color in zip(tiles, colors):
        assert tile.getpixel((s // 2, s // 2)) == color
    assert tiles[-1].tobytes() == img.resize((s, s)).tobytes()
    assert len(dynamic_preprocess(Image.new("RGB", (s, s)), 1, 4, s, use_thumbnail=True)) == 1  # no thumbnail


@pytest.mark.parametrize("kind", ["imagenet", "clip", "siglip"])
def test_build_transform_normalises(kind):
    mean, std = normalize_stats(kind)
    x = build_transform(False, 16, kind)(Image.new("RGB", (30, 20), (255, 128, 0)))
    assert x.shape == (3, 16, 16)
    expect = torch.tensor([(v / 255 - m) / s for v, m, s in zip((255, 128, 0), mean, std)])
    assert torch.allclose(x.mean(dim=(1, 2)), expect, atol=1e-5)


def test_constants_and_train_augmentation():
    assert normalize_stats("imagenet") == (IMAGENET_MEAN, IMAGENET_STD)
    assert normalize_stats("clip")[0] == CLIP_MEAN and normalize_stats("siglip")[1] == SIGLIP_STD
    with pytest.raises(ValueError, match="unknown normalize_type"):
        normalize_stats("nope")
    names = [type(t).__name__ for t in build_transform(True, 16).transforms]
    assert "RandomJPEG" in names and "RandomJPEG" not in [type(t).__name__ for t in build_transform(False, 16).transforms]
    noisy = Image.effect_noise((64, 64), 80).convert("RGB")
    out = build_transform(True, 64)(noisy)
    assert out.shape == (3, 64, 64) and not torch.equal(out, build_transform(False, 64)(noisy))


def test_load_image_and_errors(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (200, 100), (10, 20, 30)).save(path)
    x = load_image(str(path), input_size=56, max_num=6, use_thumbnail=True)
    assert x.shape == (3, 3, 56, 56)  # 2x1 grid + thumbnail
    assert load_image(str(path), input_size=56, dynamic=False).shape == (1, 3, 56, 56)
    with pytest.raises(MediaError, match="missing.png: file not found"):
        load_image(str(tmp_path / "missing.png"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(MediaError, match="bad.jpg: cannot read image"):
        load_image(str(bad))


def test_image_reader(tmp_path, chat_config):
    assert reader_for_key("image") is ImageReader
    path = tmp_path / "wide.png"
    Image.new("RGB", (400, 100), (0, 100, 200)).save(path)
    size = chat_config.image_size
    reader = ImageReader(chat_config, {"dynamic_image_size": True, "use_thumbnail": True, "max_dynamic_patch": 4})
    tiles = reader.load(str(path))
    assert len(tiles) == 5 and all(t.shape == (3, size, size) for t in tiles)  # 4x1 + thumbnail
    assert len(ImageReader(chat_config, {"dynamic_image_size": False}).load(str(path))) == 1
    shared = reader.load_many([str(path), str(path)])  # 4 // 2 = 2 tiles each: 2x1 + thumbnail
    assert [len(t) for t in shared] == [3, 3]
    with pytest.raises(MediaError, match="nothere.png"):
        reader.load(str(tmp_path / "nothere.png"))
    reader.check(str(path))
    with pytest.raises(MediaError, match="nothere.png: file not found"):
        reader.check(str(tmp_path / "nothere.png"))


def test_reader_uses_encoder_declared_statistics(tmp_path, chat_config):
    cfg = chat_config.__class__.from_dict(chat_config.to_dict())
    cfg.vision_config.image_mean, cfg.vision_config.image_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    path = tmp_path / "g.png"
    Image.new("RGB", (cfg.image_size, cfg.image_size), (255, 255, 255)).save(path)
    x = ImageReader(cfg, {"normalize_type": "clip"}).load(str(path))[0]
    assert torch.allclose(x, torch.full_like(x, 2.0))  # (1 - 0.5) / 0.25
    y = ImageReader(chat_config, {"normalize_type": "siglip"}).load(str(path))[0]
    assert torch.allclose(y, torch.ones_like(y))  # (1 - 0.5) / 0.5
