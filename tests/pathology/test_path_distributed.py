"""Extraction on several processes: torchrun (gloo, CPU) gives the same files as one process, one merged error
log and one summary; a killed rank leaves only its own slides unfinished and a rerun finishes just those."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from patches.pathology.distributed import shard
from patches.pathology.extract import discover_slides, main

REPO = Path(__file__).resolve().parents[2]
TINY = ["--encoder", "virchow2_tiny", "--random-init-seed", "0", "--no-progress", "--batch-size", "16"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(argv, rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)  # the parent's intra-op thread pool does not survive fork()
    sys.exit(main(argv))


def test_torchrun_two_ranks_match_one_process(wsi_fixtures, tmp_path):
    from patches.pathology.demo import make_slide

    slides = tmp_path / "slides"
    shutil.copytree(wsi_fixtures, slides)
    rng = np.random.default_rng(3)
    for i, objective in enumerate((20, 40, 20, 40)):
        make_slide(str(slides / f"gen{i}.{'svs' if objective == 40 else 'tiff'}"), 1 + i % 3, rng, 40, objective)
    args = ["--slides", str(slides), *TINY, "--tile", "16", "--mpp", "0.499", "--tissue", "none"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out", str(one)]) == 2  # the fixtures' broken slides fail (logged, counted)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO / "internvl_chat"), str(REPO)]))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                           str(_free_port()), "-m", "patches.pathology.extract", *args, "--out", str(two)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stderr[-3000:]  # failed slides: non-zero, after finishing everything else
    assert 'File "' + str(REPO / "patches") not in proc.stderr, proc.stderr[-3000:]  # no traceback of ours
    files_one = {p.name: _sha(p) for p in one.glob("*.h5")}
    files_two = {p.name: _sha(p) for p in two.glob("*.h5")}
    assert len(files_one) == 6 and files_one == files_two  # byte-identical (sha256)
    summary = json.loads((two / "extract_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["counts"] == {"ok": 6, "failed": 3}
    ranks = summary["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["slides_assigned"] > 0 for r in ranks)
    assert sum(r["tiles"] for r in ranks) == sum(s.get("n_tiles", 0) for s in summary["slides"]) > 0
    assert all(r["tiles_per_s"] > 0 for r in ranks if r["tiles"])
    errors = [json.loads(line) for line in (two / "errors.jsonl").read_text().splitlines()]
    assert sorted(Path(e["slide"]).name for e in errors if e["status"] == "failed") == [
        "boxes.tiff", "unopenable.tiff", "unreadable.svs"]
    assert not list(two.glob(".errors.rank*")) and not list(two.glob(".summary.rank*"))


def test_killed_rank_leaves_only_its_slides_and_rerun_finishes_them(slide_dir, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(8):
        src = sorted(slide_dir.iterdir())[i % 3]
        shutil.copy(src, slides / f"s{i}{src.suffix}")
    listed = discover_slides(str(slides))
    owned = [{p.stem for p in shard(listed, r, 2)} for r in (0, 1)]
    assert owned[0] and owned[1] and not owned[0] & owned[1]
    out = tmp_path / "feats"
    args = ["--slides", str(slides), *TINY, "--mpp", "1.0", "--out", str(out)]
    port = _free_port()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_rank, args=(args, r, 2, port)) for r in (0, 1)]
    for p in procs:
        p.start()
    done = lambda r: {p.stem for p in out.glob("s*.h5")} & owned[r]  # noqa: E731
    deadline = time.time() + 180
    while time.time() < deadline and not done(1):
        time.sleep(0.005)
    os.kill(procs[1].pid, signal.SIGKILL)  # rank 1 dies mid-run
    while time.time() < deadline and done(0) != owned[0]:
        time.sleep(0.05)
    os.kill(procs[0].pid, signal.SIGKILL)  # rank 0 finished its share and waits at the barrier: torn down
    for p in procs:
        p.join()
    finished_by_1 = done(1)
    assert done(0) == owned[0] and 1 <= len(finished_by_1) < len(owned[1]), (done(0), finished_by_1, owned)
    assert main(args) == 0  # the rerun (any world size) finishes what is missing
    summary = json.loads((out / "extract_summary.json").read_text())
    redone = {Path(s["slide"]).stem for s in summary["slides"] if s["status"] == "ok"}
    assert redone == owned[1] - finished_by_1  # only the dead rank's unfinished slides
    assert summary["counts"] == {"ok": len(redone), "skipped (finished)": 8 - len(redone)}
    assert not list(out.glob(".tmp-*")) and not list(out.glob(".summary.rank*"))


def test_shard_is_a_deterministic_size_balanced_partition(tmp_path):
    slides = []
    for i, size in enumerate([50, 10, 40, 30, 20, 5, 5]):
        path = tmp_path / f"s{i}.svs"
        path.write_bytes(b"x" * size)
        slides.append(path)
    slides.append(tmp_path / "missing.svs")  # counted as size 0, still owned by exactly one rank
    parts = [shard(slides, r, 3) for r in range(3)]
    assert sorted(p for part in parts for p in part) == sorted(slides)
    assert parts == [shard(list(slides), r, 3) for r in range(3)]  # same list, same shares
    loads = [sum(p.stat().st_size for p in part if p.exists()) for part in parts]
    assert max(loads) - min(loads) <= 10  # greedy by bytes: 55 / 55 / 50
    assert shard(slides, 0, 1) == slides
