"""Shared machinery of the Brainfound training stages: YAML configs, accelerate, resumable checkpoints, loss logs.

* Configs are YAML (``--config``), deep-merged over the stage's defaults, with ``--set a.b=value`` overrides
  (values parsed as YAML).
* ``make_accelerator``: ``mixed_precision: auto`` is bf16 on a GPU that supports it, fp16 on other GPUs, off on CPU.
  Launch with ``torchrun`` or ``accelerate launch`` (several CPU processes use gloo); a plain ``python -m`` run is
  one process.
* Checkpoints: ``<out>/checkpoints/step_XXXXXX/`` holds ``model.safetensors`` (everything the stage needs to
  continue: trainable and momentum weights, queues), ``optimizer.pt`` + ``lr_scheduler.pt`` (``torch.save``; read
  back with ``weights_only=True``), ``rng_rank{r}.pt`` (each rank's torch RNG states) and ``state.json`` (step,
  epoch, batch position, loss history, the architecture the weights belong to). The directory is written under a
  temporary name and renamed, then ``checkpoints/latest`` is rewritten atomically: a crash leaves either the
  previous or the new checkpoint, never a partial one. ``save_total_limit`` old ones are pruned after that.
* ``--resume auto`` (default) continues from ``latest`` when there is one; a checkpoint whose recorded
  architecture differs from the current config is refused with the difference named.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from patches.brainfound.weights import atomic_save_safetensors, atomic_write_text

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- config
def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def stage_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="YAML config (see patches/brainfound/configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set train.max_steps=100 (value parsed as YAML)")
    p.add_argument("--output_dir", default=None, help="overrides train.output_dir")
    p.add_argument("--resume", default="auto", help="auto (latest checkpoint if any) | never | a checkpoint dir")
    return p


def load_config(path: str, sets: list[str], defaults: dict) -> dict:
    with open(path, encoding="utf-8") as fh:
        try:
            user = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(user, dict):
        raise ValueError(f"{path}: the config must be a mapping")
    unknown = set(user) - set(defaults)
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown)}; known: {sorted(defaults)}")
    cfg = deep_merge(defaults, user)
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    cfg["_config_path"] = str(Path(path).resolve())
    return cfg


# ----------------------------------------------------------------------------------------------- runtime
def make_accelerator(mixed_precision: str = "auto", grad_accum: int = 1):
    from accelerate import Accelerator

    if mixed_precision == "auto":
        if torch.cuda.is_available():
            mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            mixed_precision = "no"
    # without CUDA accelerate sets up a multi-process (gloo) group only when told it runs on CPU
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                       cpu=not torch.cuda.is_available())


def setup_logging(is_main: bool) -> None:
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ----------------------------------------------------------------------------------------------- checkpoints
def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    pointer = Path(out_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    ckpt = pointer.parent / pointer.read_text().strip()
    if not (ckpt / "state.json").is_file():
        raise FileNotFoundError(f"{pointer} points to {ckpt}, which is not a complete checkpoint")
    return ckpt


def save_checkpoint(accelerator, out_dir: str | os.PathLike, step: int, tensors: dict[str, torch.Tensor],
                    optimizer, lr_scheduler, state: dict[str, Any], save_total_limit: int = 2) -> Path:
    """Collective: every rank calls it (each writes its RNG state); rank 0 writes the rest and commits."""
    ckpt_root = Path(out_dir) / "checkpoints"
    name = f"step_{step:06d}"
    tmp = ckpt_root / f".{name}.tmp"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, tmp / f"rng_rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    final = ckpt_root / name
    if accelerator.is_main_process:
        atomic_save_safetensors(tensors, tmp / "model.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(ckpt_root / "latest", name + "\n")
        kept = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
        for old in kept[:-max(1, save_total_limit)]:
            shutil.rmtree(old)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(ckpt: Path, optimizer, lr_scheduler, process_index: int,
                    expect_arch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors + state of ``ckpt``; restores optimizer, scheduler and this rank's RNG (weights_only loads)."""
    from safetensors.torch import load_file

    state = json.loads((ckpt / "state.json").read_text())
    saved_arch = state.get("arch")
    if saved_arch is not None and json.loads(json.dumps(expect_arch)) != saved_arch:
        diff = sorted(k for k in set(saved_arch) | set(expect_arch)
                      if saved_arch.get(k) != json.loads(json.dumps(expect_arch)).get(k))
        raise ValueError(f"{ckpt}: checkpoint was written for a different architecture (differs in {diff}); "
                         f"use another output_dir or --resume never")
    tensors = load_file(str(ckpt / "model.safetensors"))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True))
    lr_scheduler.load_state_dict(torch.load(ckpt / "lr_scheduler.pt", map_location="cpu", weights_only=True))
    rng_file = ckpt / f"rng_rank{process_index}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, map_location="cpu", weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    else:
        logger.warning("%s has no RNG state for rank %d (different world size?); continuing with a fresh RNG",
                       ckpt, process_index)
    return tensors, state


def find_resume(args_resume: str, out_dir: str) -> Path | None:
    if args_resume == "never":
        return None
    if args_resume == "auto":
        return latest_checkpoint(out_dir)
    ckpt = Path(args_resume)
    if not (ckpt / "state.json").is_file():
        raise FileNotFoundError(f"--resume {ckpt}: not a checkpoint directory (no state.json)")
    return ckpt


# ----------------------------------------------------------------------------------------------- loss logs
def write_loss_log(out_dir: str | os.PathLike, history: list[list[float]], title: str,
                   columns: tuple[str, ...] = ("step", "loss")) -> None:
    """``loss.csv`` and ``loss.png`` (matplotlib, Agg) from the full history, both written atomically."""
    out = Path(out_dir)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    writer.writerows(history)
    atomic_write_text(out / "loss.csv", buf.getvalue())
    if len(history) < 2:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    steps = [h[0] for h in history]
    for i, col in enumerate(columns[1:], start=1):
        ax.plot(steps, [h[i] for h in history], label=col)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    tmp = out / ".loss.png.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out / "loss.png")


# ----------------------------------------------------------------------------------------------- sampling
class EpochSampler(torch.utils.data.Sampler):
    """Shuffled indices for one rank, a pure function of (seed, epoch): ``perm(seed, epoch)[rank::world]``,
    truncated so every rank gets the same whole number of batches; ``set_epoch(e, start_batch)`` resumes mid-epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.bs, self.seed, self.rank, self.world, self.shuffle = n, batch_size, seed, rank, world, shuffle
        self.batches_per_epoch = n // (batch_size * world)
        if self.batches_per_epoch == 0:
            raise ValueError(f"{n} samples are fewer than one batch of {batch_size} x {world} processes")
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start_batch)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start) * self.bs

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        mine = order[:self.batches_per_epoch * self.bs * self.world][self.rank::self.world]
        return iter(mine[self.start * self.bs:])
