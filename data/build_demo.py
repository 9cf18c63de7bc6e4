"""Build the demo data sets: a small synthetic 2D task (default) and, on request, the plugins' demos.

2D demo ("what colour is the shape"): each image is a small square (``--image-size``, default the tiny model's
112 px tile; a square image is one tile even with dynamic tiling on) with one big filled shape (circle /
square / triangle / diamond) in one of four colours on a neutral background, with jittered size, position and
colour shade. Questions are identical whatever the image shows, so the answer can only come from the pixels:

* ``mcq``: InternVL-style multiple choice over the four colours, options in a random order per sample (the
  letter cannot be guessed from the text: chance is 0.25), reference = the letter;
* ``open_qa``: "What colour is the shape?" / "What shape is drawn?" answered with one word.

Output (``--out``, default ``data/demo``; generated, git-ignored)::

    images/{train,test}/NNNNN.png
    train.jsonl, train_meta.json            InternVL meta: {"demo_shapes": {root, annotation, ...}}
    test_mcq.jsonl, test_open.jsonl         rows carry "task" (and mcq rows "options")
    test_meta.json                          {"demo_mcq": {..., "task": "mcq"}, "demo_open": {..., "task": "open_qa"}}
    build_info.json                         every parameter that shaped the files (a rebuild is skipped when equal)

Paths inside the meta files are written the way ``--out`` was given (relative paths stay relative to the working
directory, as InternVL reads them: run from the repo root). The same ``--seed`` gives byte-identical files.
Files are built in a temporary sibling folder and swapped in at the end (``internvl.fileio.atomic_directory``),
so an interrupted build leaves no half-written demo.

``--pathology`` / ``--neuro`` / ``--brainfound`` call ``patches.<name>.demo.build(out_dir)`` (out_dir =
``<plugin-root>/demo_<name>``; ``--seed`` and ``--force`` are passed on when the builder takes them); ``--all`` builds everything. Without any flag only the 2D demo is built.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "internvl_chat"), str(REPO)]  # runnable before `pip install -e .` too

from internvl.fileio import atomic_directory  # noqa: E402

GENERATOR_VERSION = 1
PLUGINS = ("pathology", "neuro", "brainfound")

COLOURS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (45, 85, 220), "yellow": (235, 200, 35)}
SHAPES = ("circle", "square", "triangle", "diamond")
BACKGROUNDS = ((255, 255, 255), (225, 225, 225), (190, 190, 190), (60, 60, 60))
MCQ_QUESTIONS = ("Which colour is the shape?", "What is the colour of the shape in the image?",
                 "Which colour best describes the object?")
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."
OPEN_QUESTIONS = {"colour": "What colour is the shape? Answer with a single word.",
                  "shape": "What shape is drawn? Answer with a single word."}


def draw_image(rng: random.Random, size: int) -> tuple[Image.Image, dict]:
    """One image and its attributes (colour, shape, box)."""
    colour = rng.choice(sorted(COLOURS))
    shape = rng.choice(SHAPES)
    background = rng.choice(BACKGROUNDS)
    fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    side = rng.randint(int(size * 0.6), int(size * 0.9))
    x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
    box = (x0, y0, x0 + side - 1, y0 + side - 1)
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(x0 + side / 2, y0), (box[2], box[3]), (x0, box[3])], fill=fill)
    else:
        cx, cy = x0 + side / 2, y0 + side / 2
        draw.polygon([(cx, y0), (box[2], cy), (cx, box[3]), (x0, cy)], fill=fill)
    return img, {"colour": colour, "shape": shape, "box": list(box)}


def mcq_row(rng: random.Random, attrs: dict) -> tuple[list[dict], dict]:
    options = sorted(COLOURS)
    rng.shuffle(options)
    letter = "ABCD"[options.index(attrs["colour"])]
    lines = "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(options))
    question = f"<image>\n{rng.choice(MCQ_QUESTIONS)}\n{lines}\n{MCQ_SUFFIX}"
    return _turns(question, letter), {"task": "mcq", "options": options}


def open_row(rng: random.Random, attrs: dict, what: str | None = None) -> tuple[list[dict], dict]:
    what = what or rng.choice(sorted(OPEN_QUESTIONS))
    return _turns(f"<image>\n{OPEN_QUESTIONS[what]}", attrs[what]), {"task": "open_qa"}


def _turns(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def _write_split(out: str, split: str, kinds: list[str], rng: random.Random, size: int) -> list[dict]:
    """Draw one image per entry of ``kinds`` ("mcq" / "open"), save it, return the JSONL rows."""
    os.makedirs(os.path.join(out, "images", split), exist_ok=True)
    rows = []
    for i, kind in enumerate(kinds):
        img, attrs = draw_image(rng, size)
        rel = f"images/{split}/{i:05d}.png"
        img.save(os.path.join(out, rel), format="PNG")
        turns, extra = mcq_row(rng, attrs) if kind == "mcq" else open_row(rng, attrs)
        rows.append({"id": f"{split}_{i:05d}", "image": rel, "width": size, "height": size,
                     "conversations": turns, **extra, "attributes": attrs})
    return rows


def _write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _entry(shown: str, annotation: str, n: int, **extra) -> dict:
    return {"root": shown, "annotation": os.path.join(shown, annotation), "data_augment": False,
            "repeat_time": 1, "length": n, **extra}


def build(out_dir: str = "data/demo", *, seed: int = 0, n_train: int = 1600, n_test_mcq: int = 200,
          n_test_open: int = 60, image_size: int = 112, open_fraction: float = 0.25, force: bool = False) -> dict:
    """Write the 2D demo into ``out_dir``; returns the paths written (skips when an equal build is there)."""
    params = {"generator_version": GENERATOR_VERSION, "seed": seed, "n_train": n_train, "n_test_mcq": n_test_mcq,
              "n_test_open": n_test_open, "image_size": image_size, "open_fraction": open_fraction,
              "out_dir": out_dir}
    paths = {"train_meta": os.path.join(out_dir, "train_meta.json"),
             "test_meta": os.path.join(out_dir, "test_meta.json"),
             "test_mcq": os.path.join(out_dir, "test_mcq.jsonl"), "test_open": os.path.join(out_dir, "test_open.jsonl")}
    info_path = os.path.join(out_dir, "build_info.json")
    if not force and os.path.exists(info_path):
        with open(info_path, encoding="utf-8") as f:
            if json.load(f) == params:
                print(f"{out_dir}: up to date (same parameters); --force rebuilds")
                return paths
    with atomic_directory(out_dir) as tmp:
        train_kinds = _kinds(random.Random(f"{seed}-train-kinds"), n_train, open_fraction)
        train = _write_split(tmp, "train", train_kinds, random.Random(f"{seed}-train"), image_size)
        test = _write_split(tmp, "test", ["mcq"] * n_test_mcq + ["open"] * n_test_open,
                            random.Random(f"{seed}-test"), image_size)
        _write_jsonl(os.path.join(tmp, "train.jsonl"), train)
        _write_jsonl(os.path.join(tmp, "test_mcq.jsonl"), test[:n_test_mcq])
        _write_jsonl(os.path.join(tmp, "test_open.jsonl"), test[n_test_mcq:])
        metas = {"train_meta.json": {"demo_shapes": _entry(out_dir, "train.jsonl", n_train)},
                 "test_meta.json": {"demo_mcq": _entry(out_dir, "test_mcq.jsonl", n_test_mcq, task="mcq"),
                                    "demo_open": _entry(out_dir, "test_open.jsonl", n_test_open, task="open_qa")}}
        for name, meta in {**metas, "build_info.json": params}.items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2)
    print(f"{out_dir}: {n_train} train rows, {n_test_mcq} mcq + {n_test_open} open_qa test rows, "
          f"{image_size}x{image_size} images")
    return paths


def _kinds(rng: random.Random, n: int, open_fraction: float) -> list[str]:
    n_open = int(round(n * open_fraction))
    kinds = ["open"] * n_open + ["mcq"] * (n - n_open)
    rng.shuffle(kinds)
    return kinds


def build_plugin(name: str, out_dir: str, *, seed: int = 0, force: bool = False):
    """Call ``patches.<name>.demo.build(out_dir)`` (with ``seed`` / ``force`` where its signature takes them);
    a clear error if that plugin ships no demo builder."""
    module = f"patches.{name}.demo"
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name not in (module, f"patches.{name}", "patches"):
            raise  # the demo module exists but one of its own imports is missing: show that error
        raise SystemExit(f"--{name}: {module} is not available ({exc}); the {name} plugin has no demo builder "
                         f"yet, or the repo is not installed (pip install -e .)") from exc
    build_fn = getattr(mod, "build", None)
    if not callable(build_fn):
        raise SystemExit(f"--{name}: {module} has no build(out_dir) function")
    accepted = inspect.signature(build_fn).parameters
    return build_fn(out_dir, **{k: v for k, v in (("seed", seed), ("force", force)) if k in accepted})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/demo", help="2D demo folder (default: data/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=1600, help="training rows (one image each)")
    p.add_argument("--test-mcq", type=int, default=200)
    p.add_argument("--test-open", type=int, default=60)
    p.add_argument("--open-fraction", type=float, default=0.25, help="share of open-QA rows in train")
    p.add_argument("--image-size", type=int, default=112,
                   help="image side in pixels (default 112: the tiny model's tile, config.force_image_size)")
    p.add_argument("--force", action="store_true", help="rebuild even if an identical build is present")
    p.add_argument("--core", action="store_true", help="build the 2D demo (default when no plugin flag is given)")
    for name in PLUGINS:
        p.add_argument(f"--{name}", action="store_true", help=f"build the {name} plugin demo into "
                                                                f"<plugin-root>/demo_{name}")
    p.add_argument("--all", action="store_true", help="2D demo and every plugin demo")
    p.add_argument("--plugin-root", default="data", help="parent folder of the plugin demos (default: data)")
    args = p.parse_args(argv)
    if not 0.0 <= args.open_fraction <= 1.0:
        p.error("--open-fraction must be in [0, 1]")
    if min(args.train, args.test_mcq, args.test_open) < 0 or args.image_size < 8:
        p.error("sizes must be >= 0 and --image-size >= 8")
    plugins = [n for n in PLUGINS if args.all or getattr(args, n)]
    if args.core or args.all or not plugins:
        build(args.out, seed=args.seed, n_train=args.train, n_test_mcq=args.test_mcq, n_test_open=args.test_open,
              image_size=args.image_size, open_fraction=args.open_fraction, force=args.force)
    for name in plugins:
        result = build_plugin(name, os.path.join(args.plugin_root, f"demo_{name}"), seed=args.seed,
                              force=args.force)
        print(f"{name} demo: {result if result is not None else os.path.join(args.plugin_root, f'demo_{name}')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
