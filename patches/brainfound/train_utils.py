"""Shared machinery of the Brainfound training stages: YAML configs, accelerate, resumable checkpoints, loss logs.

* Configs are YAML (``--config``), deep-merged over the stage's defaults, with ``--set a.b=value`` overrides
  (values parsed as YAML).
* ``make_accelerator``: ``mixed_precision: auto`` is bf16 on a GPU that supports it, fp16 on other GPUs, off on CPU.
  Launch with ``torchrun`` or ``accelerate launch`` (several CPU processes use gloo); a plain ``python -m`` run is
  one process.
* Checkpoints: the core finetune's layout and code (``internvl.train.trainer_utils``, ``internvl.model.checkpoint``,
  ``internvl.fileio``): ``<out>/checkpoint-N/`` holds ``model.safetensors`` (everything the stage needs to
  continue: trainable and momentum weights, queues), ``optimizer.pt`` + ``lr_scheduler.pt`` (``torch.save``; read
  back with ``weights_only=True``), ``rng_rank{r}.pt`` (each rank's torch RNG states) and ``trainer_state.json``
  (step, epoch, loss history, the architecture the weights belong to; written last). The folder is written as
  ``tmp-checkpoint-N`` and renamed: a crash leaves either the previous or the new checkpoint, never a partial one
  (a left-over staging folder is removed at the next start). ``save_total_limit`` old ones are rotated after that.
* ``--resume auto`` (default) continues from the last complete checkpoint; a checkpoint whose recorded
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

from internvl.fileio import atomic_write_text
from internvl.model.checkpoint import WEIGHTS, read_weights
from internvl.train.trainer_utils import (STAGING_PREFIX, TRAINER_STATE, is_complete_checkpoint,
                                          last_complete_checkpoint, stale_staging_dirs)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- config
def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def add_launcher_args(p: argparse.ArgumentParser) -> None:
    """``--local_rank`` / ``--local-rank``: what the deprecated ``python -m torch.distributed.launch`` passes (the
    rank itself is read from the environment, as torchrun and accelerate set it)."""
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def stage_parser(description: str, default_config: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=default_config is None, default=default_config,
                   help="YAML config (see patches/brainfound/configs/)" +
                        (f"; default {default_config}" if default_config else ""))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set train.max_steps=100 (value parsed as YAML)")
    p.add_argument("--output_dir", default=None, help="overrides train.output_dir")
    p.add_argument("--resume", default="auto", help="auto (latest checkpoint if any) | never | a checkpoint dir")
    add_launcher_args(p)
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
    apply_sets(cfg, sets)
    cfg["_config_path"] = str(Path(path).resolve())
    return cfg


def apply_sets(cfg: dict, sets: list[str]) -> None:
    """``--set a.b=value`` overrides (value parsed as YAML), in place."""
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)


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
def save_checkpoint(accelerator, out_dir: str | os.PathLike, step: int, tensors: dict[str, torch.Tensor],
                    optimizer, lr_scheduler, state: dict[str, Any], save_total_limit: int = 2) -> Path:
    """Collective: every rank calls it (each writes its RNG state); rank 0 writes the rest and commits.

    The core finetune's layout and commit protocol (``internvl.train.trainer_utils``): everything goes into the
    staging folder ``tmp-checkpoint-N``, ``trainer_state.json`` last, which then becomes ``checkpoint-N`` with one
    ``os.replace``; old checkpoints are rotated (transformers' ``rotate_checkpoints``) only after that."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    staging = out / f"{STAGING_PREFIX}-{step}"
    final = out / f"{PREFIX_CHECKPOINT_DIR}-{step}"
    if accelerator.is_main_process:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, staging / f"rng_rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # tied tensors (decoder <-> text encoder) share storage; safetensors stores each key's own copy
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()},
                  str(staging / WEIGHTS))
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(lr_scheduler.state_dict(), staging / "lr_scheduler.pt")
        (staging / TRAINER_STATE).write_text(json.dumps({**state, "step": step}, indent=1))
        trash = None
        if final.exists():
            trash = out / f"{STAGING_PREFIX}-old-{step}"
            os.replace(final, trash)
        os.replace(staging, final)
        if trash is not None:
            shutil.rmtree(trash)
        rotate_checkpoints(output_dir=str(out), save_total_limit=max(1, save_total_limit))
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(ckpt: Path, optimizer, lr_scheduler, process_index: int,
                    expect_arch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors + state of ``ckpt``; restores optimizer, scheduler and this rank's RNG (weights_only loads)."""
    state = json.loads((ckpt / TRAINER_STATE).read_text())
    saved_arch = state.get("arch")
    if saved_arch is not None and json.loads(json.dumps(expect_arch)) != saved_arch:
        diff = sorted(k for k in set(saved_arch) | set(expect_arch)
                      if saved_arch.get(k) != json.loads(json.dumps(expect_arch)).get(k))
        raise ValueError(f"{ckpt}: checkpoint was written for a different architecture (differs in {diff}); "
                         f"use another output_dir or --resume never")
    tensors = read_weights(str(ckpt))
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


def find_resume(args_resume: str, out_dir: str, is_main: bool = True) -> Path | None:
    """``auto``: the last complete ``checkpoint-N`` of ``out_dir`` (staging folders a crash left are removed, as
    the core finetune does); ``never``; or a checkpoint directory."""
    if args_resume == "never":
        return None
    if args_resume == "auto":
        if is_main:
            for path in stale_staging_dirs(out_dir):
                logger.warning("removing %s: a checkpoint that was being written when a previous run stopped", path)
                shutil.rmtree(path)
        found = last_complete_checkpoint(out_dir)
        return Path(found) if found else None
    ckpt = Path(args_resume)
    if not is_complete_checkpoint(str(ckpt)):
        raise FileNotFoundError(f"--resume {ckpt}: not a complete checkpoint directory (no {TRAINER_STATE})")
    return ckpt


WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".pkl", ".ckpt")


def is_weights_file(spec: str | None) -> bool:
    return bool(spec) and spec not in ("auto", "never") and Path(spec).is_file() and \
        Path(spec).suffix.lower() in WEIGHT_FILE_SUFFIXES


def read_weights_only(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a weights file: safetensors, or ``torch.load(weights_only=True)`` (a Brainfound-style
    ``{"model": state_dict, "optimizer": ..., "epoch": ...}`` checkpoint, or a bare state dict; ``module.``
    prefixes of DDP saves are dropped). A pickle that needs code to load is refused, not executed."""
    import pickle

    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{path}: cannot be read weights-only ({str(exc).splitlines()[0]}); "
                         f"convert it to safetensors or a plain state dict") from exc
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: no state dict of tensors found")
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_weights_into(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> dict[str, int]:
    """Copy every tensor of ``state`` whose name and shape match ``model``'s; at least one must. Momentum twins
    (``<name>_m.*``) absent from ``state`` start as copies of their online module."""
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not matched:
        raise ValueError(f"{where}: none of its {len(state)} tensors matches this model (names or shapes differ)")
    model.load_state_dict(matched, strict=False)
    synced = 0
    for name in getattr(model, "pairs", ()):
        if hasattr(model, f"{name}_m") and not any(k.startswith(f"{name}_m.") for k in matched):
            getattr(model, f"{name}_m").load_state_dict(getattr(model, name).state_dict())
            synced += 1
    counts = {"loaded": len(matched), "ignored": len(state) - len(matched), "not_in_file": len(own) - len(matched),
              "momentum_synced": synced}
    if counts["ignored"]:
        logger.warning("%s: %d tensors match no weight of this model and were ignored", where, counts["ignored"])
    return counts


# ----------------------------------------------------------------------------------------------- loss logs
def write_loss_log(out_dir: str | os.PathLike, history: list[list[float]], title: str,
                   columns: tuple[str, ...] = ("step", "loss")) -> None:
    """``loss.csv`` and ``loss.png`` (matplotlib, Agg) from the full history, both written atomically."""
    out = Path(out_dir)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    writer.writerows(history)
    atomic_write_text(buf.getvalue(), out / "loss.csv")
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
