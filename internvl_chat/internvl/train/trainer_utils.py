"""The HF ``Trainer`` as the finetune uses it: atomic checkpoints, safe auto-resume, throughput logging.

Atomic checkpoints (the choice, and why). transformers writes ``checkpoint-N`` in place: the weights, then the
optimizer (under DeepSpeed, one shard per rank), RNG states, and ``trainer_state.json`` last, and then deletes
older checkpoints beyond ``save_total_limit``. A crash in between leaves a ``checkpoint-N`` that
``get_last_checkpoint`` would pick. ``InternVLTrainer`` instead lets every rank write into the staging folder
``tmp-checkpoint-N/checkpoint-N``; after a barrier the saving process moves it to ``checkpoint-N`` with one
``os.replace`` (an older ``checkpoint-N`` is first moved aside, then deleted), and only then rotates old
checkpoints. So a ``checkpoint-N`` is always complete, and an older one survives until its successor is.
``last_complete_checkpoint`` additionally requires ``trainer_state.json`` (checkpoints written by other tools)
and warns about what it skips; staging folders left by a crash are reported and removed at start-up.

Throughput: every training log line gets, since the previous log line, ``tokens_per_second`` (real, non-padding
tokens of all ranks, counted by the Trainer's ``include_num_input_tokens_seen="non_padding"``),
``samples_per_second`` (training samples: a pack counts its samples), ``padding_share`` (padding tokens / all
tokens this rank fed the LLM) and, on CUDA, ``mfu``: ``6 * parameters * real tokens/s`` over the GPUs' peak dense
bf16 FLOP/s (``$INTERNVL_PEAK_TFLOPS`` per GPU, else a small table of known GPUs; absent when unknown). Attention
FLOPs are left out, so MFU is a lower bound.

``group_by_length``: lengths come from the annotation rows, never from loading media: the row's ``length``
field if present, else the tokenised conversation text plus ``num_image_token * (max_dynamic_patch +
use_thumbnail)`` per media reference (InternVL's estimate).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import time

import torch.distributed as dist
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
FINISHED = "training_finished.json"  # written last, atomically: the run's final model is complete
STAGING_PREFIX = "tmp-" + PREFIX_CHECKPOINT_DIR


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def is_complete_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, TRAINER_STATE))


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The highest ``checkpoint-N`` in ``output_dir`` that holds ``trainer_state.json`` (None if none does)."""
    if not os.path.isdir(output_dir):
        return None
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    steps = sorted((int(m.group(1)), name) for name in os.listdir(output_dir)
                   if (m := pattern.match(name)) and os.path.isdir(os.path.join(output_dir, name)))
    for _, name in reversed(steps):
        path = os.path.join(output_dir, name)
        if is_complete_checkpoint(path):
            return path
        logger.warning("ignoring incomplete checkpoint %s (no %s)", path, TRAINER_STATE)
    return None


def stale_staging_dirs(output_dir: str) -> list[str]:
    if not os.path.isdir(output_dir):
        return []
    return sorted(os.path.join(output_dir, n) for n in os.listdir(output_dir) if n.startswith(STAGING_PREFIX))


def resolve_resume(training_args) -> str | None:
    """What to resume from: ``--resume_from_checkpoint`` (a path, or ``last``/``true``), else the last complete
    checkpoint of ``output_dir`` unless ``--overwrite_output_dir``. Called on every rank; only rank 0 cleans."""
    out = training_args.output_dir
    if training_args.process_index == 0:
        for path in stale_staging_dirs(out):
            logger.warning("removing %s: a checkpoint that was being written when a previous run stopped", path)
            shutil.rmtree(path)
    _barrier()
    explicit = training_args.resume_from_checkpoint
    if explicit:
        if str(explicit).lower() in ("last", "true", "1"):
            found = last_complete_checkpoint(out)
            if found is None:
                raise FileNotFoundError(f"--resume_from_checkpoint {explicit}: no complete checkpoint in {out}")
            return found
        if not os.path.isdir(explicit):
            raise FileNotFoundError(f"--resume_from_checkpoint {explicit}: not a directory")
        if not is_complete_checkpoint(explicit):
            raise FileNotFoundError(f"--resume_from_checkpoint {explicit}: incomplete checkpoint (no {TRAINER_STATE})")
        return explicit
    if training_args.overwrite_output_dir:
        old = get_last_checkpoint(out) if os.path.isdir(out) else None
        if old:
            logger.warning("--overwrite_output_dir: not resuming; checkpoints already in %s (e.g. %s) will be "
                           "overwritten or rotated away", out, old)
        return None
    found = last_complete_checkpoint(out)
    if found:
        logger.info("auto-resume: continuing from %s (pass --overwrite_output_dir True to start over)", found)
    return found


def write_finished(output_dir: str, state, args) -> None:
    """Mark ``output_dir`` as a finished run (after the final model, ``train_results.json`` and the state)."""
    import json

    from internvl.fileio import atomic_write_text

    record = {"global_step": state.global_step, "epoch": state.epoch, "max_steps": args.max_steps,
              "num_train_epochs": args.num_train_epochs}
    atomic_write_text(json.dumps(record, indent=2) + "\n", os.path.join(output_dir, FINISHED))


def finished_run(training_args) -> dict | None:
    """The finish record of ``output_dir`` if that run already trained as far as these arguments ask (so a
    re-launch has nothing to do), else None. ``--overwrite_output_dir`` always trains."""
    import json

    path = os.path.join(training_args.output_dir, FINISHED)
    if training_args.overwrite_output_dir or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        record = json.load(fh)
    if training_args.max_steps and training_args.max_steps > 0:
        done = record["global_step"] >= training_args.max_steps
    else:
        done = (record.get("epoch") or 0) >= float(training_args.num_train_epochs) - 1e-6
    return record if done else None


# peak dense bf16 TFLOP/s per GPU (vendor figures, without sparsity)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}


def peak_flops_per_gpu() -> float | None:
    """Peak bf16 FLOP/s of this machine's GPU (``$INTERNVL_PEAK_TFLOPS`` wins); None without CUDA or if unknown."""
    import torch

    if os.environ.get("INTERNVL_PEAK_TFLOPS"):
        return float(os.environ["INTERNVL_PEAK_TFLOPS"]) * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((tf * 1e12 for key, tf in PEAK_TFLOPS.items() if key in name), None)


class InternVLTrainer(Trainer):
    """``Trainer`` with atomic checkpoints, throughput in the logs and row-based ``group_by_length``."""

    _staging_dir: str | None = None

    # --------------------------------------------------------------------------------- atomic checkpoints
    def _get_output_dir(self, trial) -> str:
        return self._staging_dir or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, f"{STAGING_PREFIX}-{self.state.global_step}")
        final = os.path.join(run_dir, name)
        if self.args.should_save and os.path.exists(staging):
            shutil.rmtree(staging)
        _barrier()
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotate after the move, not inside
        self._staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
            self.args.save_total_limit = limit
        _barrier()  # every rank has written its files (DeepSpeed shards, RNG states)
        if self.args.should_save:
            trash = None
            if os.path.exists(final):
                trash = os.path.join(run_dir, f"{STAGING_PREFIX}-old-{self.state.global_step}")
                os.replace(final, trash)
            os.replace(os.path.join(staging, name), final)
            shutil.rmtree(staging)
            if trash:
                shutil.rmtree(trash)
            if self.state.best_global_step:
                best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
                if os.path.exists(best):
                    self.state.best_model_checkpoint = best
            rotate_checkpoints(output_dir=run_dir, save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        _barrier()

    def save_final_model(self, output_dir: str) -> None:
        """Model + tokenizer into ``output_dir``: written to a sibling folder by all ranks (ZeRO-3 gathers), then
        each file moved in with ``os.replace`` (the folder also holds checkpoints and logs, so it is not swapped
        whole)."""
        staging = os.path.join(output_dir, f"{STAGING_PREFIX}-final")
        if self.args.should_save and os.path.exists(staging):
            shutil.rmtree(staging)
        _barrier()
        self.save_model(staging)
        _barrier()
        if self.args.should_save:
            for name in sorted(os.listdir(staging)):
                os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
            shutil.rmtree(staging)
        _barrier()

    # --------------------------------------------------------------------------------- throughput
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            now = time.perf_counter()
            last = getattr(self, "_tput_last", None)
            tokens, step = self.state.num_input_tokens_seen, self.state.global_step
            if last is not None and now > last[0] and step > last[2]:
                elapsed = now - last[0]
                logs["samples_per_second"] = round(self._samples_since_log * self.args.world_size / elapsed, 3)
                if self.args.include_num_input_tokens_seen != "no":
                    logs["tokens_per_second"] = round((tokens - last[1]) / elapsed, 1)
                    peak = peak_flops_per_gpu()
                    if peak:
                        logs["mfu"] = round(6 * self._param_count() * (tokens - last[1]) / elapsed
                                            / (peak * self.args.world_size), 4)
                if self._fed_tokens:
                    logs["padding_share"] = round(1 - self._real_tokens / self._fed_tokens, 4)
            self._tput_last = (now, tokens, step)
            self._samples_since_log = self._fed_tokens = self._real_tokens = 0
        super().log(logs, start_time)

    def _param_count(self) -> int:
        if getattr(self, "_n_params", None) is None:
            model = self.model.module if hasattr(self.model, "module") else self.model
            self._n_params = model.num_parameters(exclude_embeddings=True)
        return self._n_params

    def floating_point_ops(self, inputs: dict) -> int:
        """6 x text tokens x parameters (``pixel_values`` is a dict of items per kind, not one tensor); the
        parameter count is taken once, not walked every step."""
        ids = inputs.get("input_ids")
        return 6 * (int(ids.numel()) if ids is not None else 0) * self._param_count()

    def _run_epoch(self, *args, **kwargs):
        # resumed from a checkpoint at (or past) the last step: transformers would still run one more step
        if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _inner_training_loop(self, *args, **kwargs):
        self._tput_last = None
        return super()._inner_training_loop(*args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if getattr(self, "_tput_last", None) is None:  # first step of this session: start the clock here
            self._tput_last = (time.perf_counter(), self.state.num_input_tokens_seen, self.state.global_step)
            self._samples_since_log = self._fed_tokens = self._real_tokens = 0
        ids, mask = inputs.get("input_ids"), inputs.get("attention_mask")
        if ids is not None:
            self._fed_tokens += int(ids.numel())
            self._real_tokens += int(mask.sum()) if mask is not None else int(ids.numel())
            cu = inputs.get("cu_seq_lens_q")
            self._samples_since_log += len(cu) - 1 if cu is not None else int(ids.shape[0])
        return super().training_step(model, inputs, num_items_in_batch)

    # --------------------------------------------------------------------------------- group_by_length
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "estimated_lengths"):
            return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        dataset=dataset, lengths=dataset.estimated_lengths())
        return super()._get_train_sampler(train_dataset)


__all__ = ["InternVLTrainer", "is_complete_checkpoint", "last_complete_checkpoint", "resolve_resume",
           "stale_staging_dirs"]
