"""Extraction over many processes, devices and machines: torchrun (or srun) ranks, each on its share of slides.

    torchrun --nproc_per_node=4 [--nnodes=2 --node_rank=R --master_addr=H --master_port=P] \
        -m patches.pathology.extract --slides /data/wsi --out /data/feats ...

The engine is torch.distributed: torchrun (or SLURM, whose ``SLURM_PROCID`` / ``SLURM_LOCALID`` / ``SLURM_NTASKS``
are mapped to ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE``) starts the processes; a gloo process group (CPU, any
machine) is used only for barriers, so nothing but file names crosses processes and a rank needs no GPU
communication. Each rank uses one device (``cuda:LOCAL_RANK`` when the device is CUDA).

* **Sharding** (``shard``): slides ordered by size (largest first, then name) and each given to the rank with the
  fewest bytes so far (ties: the lowest rank). The share depends only on the slide list, the slide sizes and the
  world size, so a rerun with the same list gives every rank the same slides, and a rank that dies leaves only
  its own slides unfinished; any rank skips slides already finished (``features.is_finished``).
* **Logs**: while running, rank r appends failures to ``.errors.rank<r>.jsonl``; at the end (and at the start of
  the next run, for logs a killed run left behind) rank 0 appends them, in rank order, to ``errors.jsonl``.
* **Summary**: every rank writes ``.summary.rank<r>.json`` (slides done / skipped / failed, tiles, seconds,
  tiles/s); after the final barrier rank 0 merges them into ``extract_summary.json``.
"""
from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass
from datetime import timedelta

ERROR_LOG = "errors.jsonl"
SUMMARY = "extract_summary.json"
_SLURM = {"RANK": "SLURM_PROCID", "LOCAL_RANK": "SLURM_LOCALID", "WORLD_SIZE": "SLURM_NTASKS"}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None and name in _SLURM:
        value = os.environ.get(_SLURM[name])
    return int(value) if value not in (None, "") else default


@dataclass
class RankContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    _group: bool = False

    @classmethod
    def from_env(cls) -> "RankContext":
        return cls(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def start(self, timeout_hours: float = 72.0) -> "RankContext":
        """Join the gloo group (only with more than one rank); the barrier waits at most ``timeout_hours``."""
        if self.distributed and not self._group:
            import torch.distributed as dist

            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
            os.environ.setdefault("RANK", str(self.rank))
            os.environ.setdefault("WORLD_SIZE", str(self.world_size))
            dist.init_process_group("gloo", timeout=timedelta(hours=timeout_hours))
            self._group = True
        return self

    def barrier(self) -> None:
        if self._group:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self._group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._group = False

    def device(self, device: str) -> str:
        """One device per rank: ``cuda`` becomes ``cuda:LOCAL_RANK``; an explicit index or the CPU is kept."""
        return f"cuda:{self.local_rank}" if device == "cuda" else device


def _size(path) -> int:
    from patches.pathology.features import slide_files

    try:
        return int(sum(f.stat().st_size for f in slide_files(str(path))))
    except OSError:
        return 0


def shard(slides: list, rank: int, world_size: int) -> list:
    """This rank's slides (in input order): greedy by size, deterministic (see the module docstring)."""
    if world_size <= 1:
        return list(slides)
    order = sorted(range(len(slides)), key=lambda i: (-_size(slides[i]), str(slides[i])))
    load, owner = [0] * world_size, {}
    for i in order:
        target = min(range(world_size), key=lambda r: (load[r], r))
        owner[i] = target
        load[target] += max(1, _size(slides[i]))
    return [s for i, s in enumerate(slides) if owner[i] == rank]


def error_log_path(out_dir: str, ctx: RankContext) -> str:
    return os.path.join(out_dir, f".errors.rank{ctx.rank}.jsonl" if ctx.distributed else ERROR_LOG)


def append_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()


def _rank_of(path: str) -> int:
    match = re.search(r"\.rank(\d+)\.", os.path.basename(path))
    return int(match.group(1)) if match else -1


def merge_error_logs(out_dir: str) -> int:
    """Append every per-rank error log (rank order) to ``errors.jsonl`` and remove it; returns lines moved."""
    moved = 0
    for part in sorted(glob.glob(os.path.join(out_dir, ".errors.rank*.jsonl")), key=_rank_of):
        with open(part) as fh:
            lines = [ln for ln in fh.read().splitlines() if ln.strip()]
        if lines:
            with open(os.path.join(out_dir, ERROR_LOG), "a") as out:
                out.write("\n".join(lines) + "\n")
        os.unlink(part)
        moved += len(lines)
    return moved


def write_json_atomic(path: str, obj) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def rank_summary_path(out_dir: str, rank: int) -> str:
    return os.path.join(out_dir, f".summary.rank{rank}.json")


def merge_summaries(out_dir: str, world_size: int, header: dict) -> dict:
    """Rank 0, after the final barrier: one summary from the ranks' files (which are then removed)."""
    ranks, slides, counts = [], [], {}
    for r in range(world_size):
        path = rank_summary_path(out_dir, r)
        if not os.path.exists(path):
            ranks.append({"rank": r, "missing": True})
            continue
        with open(path) as fh:
            part = json.load(fh)
        os.unlink(path)
        slides.extend(part.pop("slides"))
        for k, v in part["counts"].items():
            counts[k] = counts.get(k, 0) + v
        ranks.append(part)
    summary = {**header, "world_size": world_size, "counts": counts, "ranks": ranks,
               "slides": sorted(slides, key=lambda s: s["slide"])}
    write_json_atomic(os.path.join(out_dir, SUMMARY), summary)
    return summary
