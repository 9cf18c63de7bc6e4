"""Brainfound stage 1: DDPM pretraining of the conditional UNet on 2D brain CT/MRI slices.

    accelerate launch --num_processes=1 --config_file shell/brainfound/single.yaml -m patches.brainfound.pretrain_ddpm
    accelerate launch -m patches.brainfound.pretrain_ddpm --config patches/brainfound/configs/ddpm.yaml
    python -m patches.brainfound.pretrain_ddpm --config patches/brainfound/configs/tiny_ddpm.yaml   # CPU

Without ``--config`` the full-size ``configs/ddpm.yaml`` is used (Brainfound's ``pretrain_ddpm.py`` takes no flags);
``--local_rank`` from the deprecated ``torch.distributed.launch`` is accepted.

The UNet is diffusers' ``UNet2DConditionModel`` in the ``brainfound_unet`` configuration (``model.preset`` +
``model.overrides``). Each slice (CT: one of Brainfound's four windows drawn per sample; MRI: per-slice min-max;
then its 2D augmentations) is noised at a uniform random step of a ``DDPMScheduler`` and the UNet predicts the
noise (MSE). The cross-attention condition is the modality prompt's embedding ("CT." / "T1 mri." / ...): the
[CLS] state of the configured text encoder (``condition.text_model``: a local BERT-like model or "tiny"),
computed once and kept fixed, as Brainfound does with Chinese-BERT.

Outputs in ``train.output_dir``: ``checkpoint-N/`` (resumable, see ``train_utils``), ``loss.csv`` / ``loss.png``,
and at the end ``unet/`` (diffusers ``save_pretrained`` + ``modality_embedding.safetensors``) and
``scheduler/`` -- what ``generate`` samples from and what stage 2 initialises ``brainfound_unet`` from.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from patches.brainfound.encoder import PRESETS, BrainfoundUNetConfig
from patches.brainfound.preprocess import CT_WINDOWS_STAGE1, SliceAugment, sample_generator
from patches.brainfound.train_utils import (CONFIG_DIR, EpochSampler, find_resume, load_checkpoint, load_config,
                                            make_accelerator, save_checkpoint, setup_logging, stage_parser,
                                            write_loss_log)
from internvl.fileio import atomic_directory
from patches.brainfound.weights import MODALITY_FILE, atomic_save_safetensors

logger = logging.getLogger("brainfound.ddpm")

DEFAULTS = {
    "model": {"preset": "full", "overrides": {}},
    "condition": {"text_model": "tiny"},
    "data": {"manifest": None, "ct_windows": [list(w) for w in CT_WINDOWS_STAGE1], "augment": True,
             "scale": [0.9, 1.1], "npz_key": None, "array_layout": "DHW", "max_bad_files": 0},
    "train": {"output_dir": "work_dirs/brainfound/stage1", "batch_size": 12, "lr": 1e-4, "weight_decay": 1e-2,
              "lr_scheduler": "constant_with_warmup", "warmup_steps": 500, "max_steps": 100000, "grad_clip": 1.0,
              "save_steps": 5000, "save_total_limit": 2, "log_steps": 50, "seed": 0, "num_workers": 4,
              "mixed_precision": "auto", "prediction_type": "epsilon"},
}


def encoder_config(cfg: dict) -> BrainfoundUNetConfig:
    preset = cfg["model"].get("preset") or "full"
    if preset not in PRESETS:
        raise ValueError(f"model.preset {preset!r} unknown; known: {sorted(PRESETS)}")
    return BrainfoundUNetConfig(**{**PRESETS[preset], **(cfg["model"].get("overrides") or {}),
                                   "down_path_only": False})


@torch.no_grad()
def modality_embeddings(enc_cfg: BrainfoundUNetConfig, spec: str, run_dir: str) -> torch.Tensor:
    """[CLS] embeddings ``[M, encoder_hid_dim]`` of the modality prompts under the condition text encoder."""
    from patches.brainfound.text import load_text_model, resolve_text_model

    path = resolve_text_model(spec, run_dir, lambda: list(enc_cfg.modality_prompts),
                              hidden_size=enc_cfg.encoder_hid_dim, num_layers=2,
                              num_heads=max(1, enc_cfg.encoder_hid_dim // 64), vocab_size=200)
    tok, model = load_text_model(path)
    if model.config.hidden_size != enc_cfg.encoder_hid_dim:
        raise ValueError(f"condition.text_model {path} has hidden size {model.config.hidden_size}, the UNet's "
                         f"encoder_hid_dim is {enc_cfg.encoder_hid_dim}")
    model.eval()
    batch = tok(list(enc_cfg.modality_prompts), padding=True, return_tensors="pt")
    return model(**batch).last_hidden_state[:, 0].float().contiguous()


def export(unet, cond: torch.Tensor, enc_cfg: BrainfoundUNetConfig, noise_sched, out_dir: Path) -> None:
    """``unet/`` (diffusers layout + modality embedding) and ``scheduler/``, each written atomically."""
    with atomic_directory(out_dir / "unet") as tmp:
        unet.save_pretrained(tmp, safe_serialization=True)
        atomic_save_safetensors({"modality_embedding": cond}, tmp / MODALITY_FILE,
                                metadata={"modalities": json.dumps(enc_cfg.modalities),
                                          "prompts": json.dumps(enc_cfg.modality_prompts)})
    with atomic_directory(out_dir / "scheduler") as tmp:
        noise_sched.save_pretrained(tmp)


def main(argv: list[str] | None = None) -> dict:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler

    args = stage_parser("Brainfound stage 1: DDPM pretraining", str(CONFIG_DIR / "ddpm.yaml")).parse_args(argv)
    cfg = load_config(args.config, args.set, DEFAULTS)
    tr, data = cfg["train"], cfg["data"]
    out = Path(args.output_dir or tr["output_dir"]).resolve()
    if not data.get("manifest"):
        raise ValueError("data.manifest is required (a JSONL of volumes: {\"path\": ..., \"modality\": ...})")
    if not os.path.isfile(data["manifest"]):
        raise FileNotFoundError(2, "data.manifest not found (set it in the config or with --set data.manifest=...)",
                                data["manifest"])
    acc = make_accelerator(tr["mixed_precision"])
    setup_logging(acc.is_main_process)
    out.mkdir(parents=True, exist_ok=True)
    enc_cfg = encoder_config(cfg)
    torch.manual_seed(int(tr["seed"]))

    if acc.is_main_process:  # build the tiny text model (if any) once, before other ranks look for it
        cond = modality_embeddings(enc_cfg, cfg["condition"]["text_model"], str(out))
    acc.wait_for_everyone()
    if not acc.is_main_process:
        cond = modality_embeddings(enc_cfg, cfg["condition"]["text_model"], str(out))
    unet = UNet2DConditionModel(**enc_cfg.unet_kwargs())
    noise_sched = DDPMScheduler(num_train_timesteps=enc_cfg.num_train_timesteps, beta_schedule=enc_cfg.beta_schedule,
                                beta_start=enc_cfg.beta_start, beta_end=enc_cfg.beta_end,
                                prediction_type=tr["prediction_type"])
    augment = SliceAugment(size=enc_cfg.image_size, scale=tuple(data["scale"]), rot90=True) if data["augment"] \
        else None
    from patches.brainfound.datasets import SliceDataset

    ds = SliceDataset(os.path.abspath(data["manifest"]), enc_cfg.modalities, enc_cfg.image_size,
                      cache_dir=str(out), ct_windows=data["ct_windows"], augment=augment, seed=int(tr["seed"]),
                      npz_key=data["npz_key"], array_layout=data["array_layout"],
                      max_bad_files=int(data["max_bad_files"]))
    sampler = EpochSampler(len(ds), int(tr["batch_size"]), int(tr["seed"]), acc.process_index, acc.num_processes)
    loader = DataLoader(ds, batch_size=int(tr["batch_size"]), sampler=sampler, drop_last=True,
                        num_workers=int(tr["num_workers"]))
    opt = torch.optim.AdamW(unet.parameters(), lr=float(tr["lr"]), weight_decay=float(tr["weight_decay"]))
    lr_sched = get_scheduler(tr["lr_scheduler"], optimizer=opt, num_warmup_steps=int(tr["warmup_steps"]),
                             num_training_steps=int(tr["max_steps"]))
    arch = {"unet": enc_cfg.unet_kwargs(), "modalities": enc_cfg.modalities, "prompts": enc_cfg.modality_prompts}

    step, history = 0, []
    resume = find_resume(args.resume, str(out), acc.is_main_process)
    if resume is not None:
        tensors, state = load_checkpoint(resume, opt, lr_sched, acc.process_index, arch)
        unet.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("unet.")})
        cond = tensors["cond"]
        step, history = int(state["step"]), state["history"]
        logger.info("resumed from %s at step %d", resume, step)
    unet, opt = acc.prepare(unet, opt)  # the LR scheduler stays ours: one step per optimizer step
    cond = cond.to(acc.device)
    per_epoch = sampler.batches_per_epoch
    max_steps, seed = int(tr["max_steps"]), int(tr["seed"])

    bar = tqdm(total=max_steps, initial=step, disable=not acc.is_main_process, desc="ddpm")
    running, n_run = 0.0, 0
    unet.train()
    while step < max_steps:
        epoch, skip = divmod(step, per_epoch)
        ds.set_epoch(epoch)
        sampler.set_epoch(epoch, skip)
        for batch in loader:
            x0 = batch["pixel_values"].to(acc.device)
            g = sample_generator(seed, step, acc.process_index)
            noise = torch.randn(x0.shape, generator=g).to(acc.device)
            t = torch.randint(0, noise_sched.config.num_train_timesteps, (x0.shape[0],), generator=g).to(acc.device)
            xt = noise_sched.add_noise(x0, noise, t)
            target = noise if tr["prediction_type"] == "epsilon" else noise_sched.get_velocity(x0, noise, t)
            with acc.autocast():
                pred = unet(xt, t, encoder_hidden_states=cond[batch["modality"].to(acc.device)].unsqueeze(1)).sample
            loss = F.mse_loss(pred.float(), target.float())
            acc.backward(loss)
            if tr["grad_clip"]:
                acc.clip_grad_norm_(unet.parameters(), float(tr["grad_clip"]))
            opt.step()
            lr_sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            running += float(acc.gather(loss.detach()).mean())
            n_run += 1
            bar.update(1)
            if step % int(tr["log_steps"]) == 0 or step == max_steps:
                history.append([step, running / n_run])
                bar.set_postfix(loss=f"{running / n_run:.4f}")
                running, n_run = 0.0, 0
                if acc.is_main_process:
                    write_loss_log(out, history, "Brainfound stage 1 (DDPM)")
            if step % int(tr["save_steps"]) == 0 or step == max_steps:
                raw = acc.unwrap_model(unet)
                tensors = {f"unet.{k}": v for k, v in raw.state_dict().items()}
                tensors["cond"] = cond
                save_checkpoint(acc, out, step, tensors, opt, lr_sched,
                                {"history": history, "epoch": epoch, "arch": arch},
                                int(tr["save_total_limit"]))
            if step >= max_steps:
                break
    bar.close()
    if acc.is_main_process:
        export(acc.unwrap_model(unet), cond.cpu(), enc_cfg, noise_sched, out)
        logger.info("stage 1 done: %s (final loss %.4f)", out, history[-1][1] if history else math.nan)
    acc.wait_for_everyone()
    return {"output_dir": str(out), "history": history, "steps": step}


if __name__ == "__main__":
    from patches.brainfound.brainfound_cli import run_cli

    run_cli(main)
