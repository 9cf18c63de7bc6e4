"""Brainfound stage 2: scan-report contrast (momentum encoders, queues) + report captioning, with validation.

Brainfound's own command line (``python -m patches.brainfound.pretrain --exp_name ... --epochs ...``) maps onto
this module (see ``patches.brainfound.brainfound_cli``); the YAML interface:

    accelerate launch -m patches.brainfound.pretrain_clip --config patches/brainfound/configs/clip.yaml
    torchrun --nproc_per_node 2 -m patches.brainfound.pretrain_clip --config ...        # also works
    python -m patches.brainfound.pretrain_clip --config patches/brainfound/configs/tiny_clip.yaml    # CPU

Model: ``patches.brainfound.clip_model.BrainfoundCLIP`` on a ``brainfound_unet`` encoder initialised from
``model.init_from`` (a stage-1 output dir: its ``unet/``; or a saved encoder / state-dict file; null = random)
and a text encoder (``text.text_model``: a local BERT-like dir, or "tiny", built from the training reports).
Data: scan JSONL (see ``datasets.ScanDataset``); slices windowed / scaled as stage 3 will see them, with
Brainfound's stage-2 augmentations (scale-crop, flips, small rotation, gamma) shared by all slices of a scan.

Outputs in ``train.output_dir``: resumable ``checkpoint-N/``, ``loss.csv`` / ``loss.png`` and, at the end,
``vision_encoder/`` (the trained ``brainfound_unet``, ``save_pretrained``: what stage 3 loads with
``--vision_overrides '{"pretrained_path": ".../vision_encoder"}'``), ``text_model/``, ``clip_heads.safetensors``
and ``clip_config.json`` (what ``zero_shot`` and report generation load). With ``eval.test_jsonl`` and
``eval.classes`` set, the run ends with a zero-shot evaluation written to ``zero_shot/``.

Objectives: ITC, plus the captioning LM loss when ``clip.caption`` (``loss.csv`` columns ``loss`` = total,
``itc_loss``, ``itc_acc``, ``lm_loss``). ``data.sentence_shuffle`` shuffles report sentences. Validation
(``eval.validation``, every ``eval.valid_freq`` epochs; ``eval.valid_at_start`` also before the first step) writes
generated reports and BLEU-4 / ROUGE-L / METEOR to ``valid/<epoch_NNN | step_0>/`` (``report_eval.validate``). ``train.epochs``, when
set, replaces ``train.max_steps`` (epochs x batches per epoch). ``--resume`` is ``auto`` / ``never`` / a
checkpoint dir (exact continuation) or a weights file (``.safetensors``, or ``.pth``/``.pt``/``.bin``/``.pkl``
read with ``torch.load(weights_only=True)``; matching tensors initialise the model, training starts at step 0).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from internvl.fileio import atomic_directory, atomic_write_text
from patches.brainfound.clip_model import BrainfoundCLIP, ClipConfig
from patches.brainfound.datasets import ScanDataset, collate_scans, read_jsonl
from patches.brainfound.encoder import brainfound_unet
from patches.brainfound.preprocess import SliceAugment
from patches.brainfound.train_utils import (CONFIG_DIR, EpochSampler, find_resume, is_weights_file,
                                            load_checkpoint, load_config, load_weights_into, make_accelerator,
                                            read_weights_only, save_checkpoint, setup_logging, stage_parser,
                                            write_loss_log)
from patches.brainfound.weights import atomic_save_safetensors

logger = logging.getLogger("brainfound.clip")

DEFAULTS = {
    "model": {"preset": "full", "init_from": None, "overrides": {}},
    "clip": ClipConfig().to_dict(),
    "text": {"text_model": "tiny", "tiny_hidden_size": 256, "tiny_layers": 4, "tiny_heads": 4},
    "data": {"train_jsonl": None, "augment": True, "npz_key": None, "array_layout": "DHW", "sentence_shuffle": False},
    "eval": {"test_jsonl": None, "classes": None, "templates": None, "validation": False, "valid_jsonl": None,
             "valid_freq": 1, "valid_save_image_freq": 0, "valid_at_start": False, "valid_batch_size": 4},
    "train": {"output_dir": "work_dirs/brainfound/stage2", "epochs": None, "batch_size": 8, "lr": 1e-4,
              "text_lr": 1e-5,
              "weight_decay": 0.05, "lr_scheduler": "cosine", "warmup_steps": 1000, "max_steps": 50000,
              "grad_clip": 3.0, "save_steps": 2000, "save_total_limit": 2, "log_steps": 20, "seed": 0,
              "num_workers": 4, "mixed_precision": "auto"},
}


def build_model(cfg: dict, out: Path, is_main: bool, acc) -> tuple[BrainfoundCLIP, object]:
    from patches.brainfound.text import load_text_model, resolve_text_model

    m, t = cfg["model"], cfg["text"]
    vision = brainfound_unet(pretrained_path=m.get("init_from"), preset=m.get("preset"),
                             **{**(m.get("overrides") or {}), "down_path_only": True})

    def corpus():
        return [next((r[k] for k in ScanDataset.TEXT_KEYS if k in r), "")
                for _, r in read_jsonl(cfg["data"]["train_jsonl"])]

    def text_path():
        return resolve_text_model(t["text_model"], out, corpus, hidden_size=int(t["tiny_hidden_size"]),
                                  num_layers=int(t["tiny_layers"]), num_heads=int(t["tiny_heads"]),
                                  max_length=int(cfg["clip"]["text_max_length"]))

    if is_main:  # build the tiny text model once, before other ranks look for it
        path = text_path()
    acc.wait_for_everyone()
    if not is_main:
        path = text_path()
    tok, text_model = load_text_model(path)
    return BrainfoundCLIP(vision, text_model, ClipConfig(**cfg["clip"])), tok


def export(model: BrainfoundCLIP, tok, cfg: dict, out: Path) -> None:
    with atomic_directory(out / "vision_encoder") as tmp:
        model.vision.save_pretrained(tmp)
    with atomic_directory(out / "text_model") as tmp:
        model.text.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    atomic_save_safetensors(model.head_state(), out / "clip_heads.safetensors")
    atomic_write_text(json.dumps({"clip": cfg["clip"], "data": cfg["data"]}, indent=1), out / "clip_config.json")


def scan_dataset(cfg: dict, vc, jsonl: str, train: bool) -> ScanDataset:
    """The stage's scan dataset for ``jsonl``: training (augmentations, sentence shuffle) or evaluation."""
    data, tr = cfg["data"], cfg["train"]
    augment = SliceAugment(size=vc.image_size, rot90=False, rotate_rad=0.2, gamma_prob=0.1) \
        if train and data["augment"] else None
    return ScanDataset(str(Path(jsonl).resolve()), modalities=vc.modalities, default_modality=vc.modality,
                       num_slices=vc.num_slices, image_size=vc.image_size, slice_select=vc.slice_select,
                       ct_window=vc.ct_window, augment=augment, seed=int(tr["seed"]), npz_key=data["npz_key"],
                       array_layout=data["array_layout"], sentence_shuffle=train and bool(data["sentence_shuffle"]))


class Validator:
    """Report generation on ``eval.valid_jsonl`` (default ``eval.test_jsonl``) every ``valid_freq`` epochs."""

    def __init__(self, cfg: dict, vc, out: Path):
        ev = cfg["eval"]
        self.jsonl = ev.get("valid_jsonl") or ev.get("test_jsonl")
        self.enabled = bool(ev["validation"])
        if self.enabled and not cfg["clip"]["caption"]:
            raise ValueError("eval.validation generates reports: it needs clip.caption: true")
        if self.enabled and not self.jsonl:
            raise ValueError("eval.validation is on but neither eval.valid_jsonl nor eval.test_jsonl is set")
        self.freq, self.ev, self.out, self.history = max(1, int(ev["valid_freq"])), ev, out / "valid", []
        self.ds = scan_dataset(cfg, vc, self.jsonl, train=False) if self.enabled else None

    def due(self, epoch_done: int) -> bool:
        return self.enabled and epoch_done % self.freq == 0

    def run(self, model, tok, tag: str, step: int) -> dict:
        from patches.brainfound.report_eval import validate

        res = validate(model, tok, self.ds, self.out / tag, batch_size=int(self.ev["valid_batch_size"]),
                       save_image_freq=int(self.ev["valid_save_image_freq"]))
        self.history.append({"tag": tag, "step": step, **{k: v for k, v in res.items() if k != "settings"}})
        logger.info("validation %s (step %d): BLEU-4 %.4f ROUGE-L %.4f METEOR %.4f", tag, step, res["bleu4"],
                    res["rouge_l"], res["meteor"])
        return res


def main(argv: list[str] | None = None, cfg: dict | None = None, resume: str | None = None) -> dict:
    """``argv``: the YAML/--set command line; or ``cfg`` (a merged config) + ``resume`` (``pretrain`` passes these)."""
    from diffusers.optimization import get_scheduler

    if cfg is None:
        parser = stage_parser("Brainfound stage 2: contrastive + captioning pretraining", str(CONFIG_DIR / "clip.yaml"))
        args = parser.parse_args(argv)
        cfg = load_config(args.config, args.set, DEFAULTS)
        resume, out_override = args.resume, args.output_dir
    else:
        out_override = None
    resume = resume or "auto"
    tr, data = cfg["train"], cfg["data"]
    if not data.get("train_jsonl"):
        raise ValueError("data.train_jsonl is required")
    if not Path(data["train_jsonl"]).is_file():
        raise FileNotFoundError(2, "data.train_jsonl not found (set it in the config or with --set)",
                                data["train_jsonl"])
    out = Path(out_override or tr["output_dir"]).resolve()
    acc = make_accelerator(tr["mixed_precision"])
    setup_logging(acc.is_main_process)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(tr["seed"]))
    model, tok = build_model(cfg, out, acc.is_main_process, acc)
    vc = model.vision.config
    if vc.num_slices <= 0 or vc.num_slices > model.cfg.max_slices:
        raise ValueError(f"num_slices={vc.num_slices} must be in 1..clip.max_slices={model.cfg.max_slices}")
    ds = scan_dataset(cfg, vc, data["train_jsonl"], train=True)
    validator = Validator(cfg, vc, out)
    sampler = EpochSampler(len(ds), int(tr["batch_size"]), int(tr["seed"]), acc.process_index, acc.num_processes)
    loader = DataLoader(ds, batch_size=int(tr["batch_size"]), sampler=sampler, drop_last=True,
                        num_workers=int(tr["num_workers"]), collate_fn=collate_scans)
    per_epoch = sampler.batches_per_epoch
    max_steps = int(tr["epochs"]) * per_epoch if tr.get("epochs") else int(tr["max_steps"])

    text_params = [p for p in model.text.parameters() if p.requires_grad]
    text_ids = {id(p) for p in text_params}
    other = [p for p in model.parameters() if p.requires_grad and id(p) not in text_ids]
    opt = torch.optim.AdamW([{"params": other, "lr": float(tr["lr"])},
                             {"params": text_params, "lr": float(tr["text_lr"])}],
                            weight_decay=float(tr["weight_decay"]))
    lr_sched = get_scheduler(tr["lr_scheduler"], optimizer=opt, num_warmup_steps=int(tr["warmup_steps"]),
                             num_training_steps=max_steps)
    arch = {"vision": {k: v for k, v in vc.to_dict().items() if k not in ("transformers_version", "dtype")},
            "clip": {k: v for k, v in cfg["clip"].items() if k not in ("beam_size", "decode_max_length")},
            "text": model.text.config.to_dict().get("hidden_size")}

    step, history = 0, []
    if is_weights_file(resume):  # Brainfound-style --resume PATH: weights only, training starts at step 0
        counts = load_weights_into(model, read_weights_only(resume), resume)
        logger.info("initialised from %s (weights only): %s", resume, counts)
        resume = "auto"
    ckpt = find_resume(resume, str(out), acc.is_main_process)
    if ckpt is not None:
        tensors, state = load_checkpoint(ckpt, opt, lr_sched, acc.process_index, arch)
        model.load_state_dict(tensors, strict=True)
        step, history = int(state["step"]), state["history"]
        validator.history = state.get("validation", [])
        logger.info("resumed from %s at step %d", ckpt, step)
    model, opt = acc.prepare(model, opt)
    raw = acc.unwrap_model(model)
    if step == 0 and acc.is_main_process and validator.enabled and cfg["eval"]["valid_at_start"]:
        validator.run(raw, tok, "step_0", 0)
    acc.wait_for_everyone()
    bar = tqdm(total=max_steps, initial=step, disable=not acc.is_main_process, desc="stage 2")
    keys = ("loss", "itc_loss", "itc_acc", "lm_loss") if raw.cfg.caption else ("loss", "itc_loss", "itc_acc")
    run = dict.fromkeys(keys, 0.0) | {"n": 0}
    print_freq = int(tr["log_steps"])
    model.train()
    while step < max_steps:
        epoch, skip = divmod(step, per_epoch)
        ds.set_epoch(epoch)
        sampler.set_epoch(epoch, skip)
        for batch in loader:
            enc = tok(batch["text"], padding=True, truncation=True, max_length=int(cfg["clip"]["text_max_length"]),
                      return_tensors="pt")
            with acc.autocast():
                res = model(batch["pixel_values"].to(acc.device), batch["modality"].to(acc.device),
                            enc["input_ids"].to(acc.device), enc["attention_mask"].to(acc.device),
                            gather=acc.gather, rank=acc.process_index)
            acc.backward(res["loss"])
            if tr["grad_clip"]:
                acc.clip_grad_norm_(model.parameters(), float(tr["grad_clip"]))
            opt.step()
            lr_sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            for k in keys:
                run[k] += float(acc.gather(res[k].detach()).mean())
            run["n"] += 1
            if step % print_freq == 0 or step == max_steps:
                history.append([step, *[run[k] / run["n"] for k in keys]])
                bar.set_postfix({k: f"{v:.4f}" for k, v in zip(keys, history[-1][1:])})
                run = dict.fromkeys(keys, 0.0) | {"n": 0}
                if acc.is_main_process:
                    write_loss_log(out, history, "Brainfound stage 2 (ITC + LM)", ("step", *keys))
            if step % per_epoch == 0 and validator.due(step // per_epoch):
                if acc.is_main_process:
                    validator.run(raw, tok, f"epoch_{step // per_epoch:03d}", step)
                acc.wait_for_everyone()
            if step % int(tr["save_steps"]) == 0 or step == max_steps:
                save_checkpoint(acc, out, step, raw.state_dict(), opt, lr_sched,
                                {"history": history, "epoch": epoch, "arch": arch,
                                 "validation": validator.history}, int(tr["save_total_limit"]))
            if step >= max_steps:
                break
    bar.close()
    result = {"output_dir": str(out), "history": history, "columns": ["step", *keys], "steps": step,
              "validation": validator.history}
    if acc.is_main_process:
        export(raw, tok, cfg, out)
        ev = cfg["eval"]
        if ev.get("test_jsonl") and ev.get("classes"):
            from patches.brainfound.zero_shot import evaluate, load_clip

            zs_model, zs_tok = load_clip(out)
            classes = ev["classes"] if isinstance(ev["classes"], list) else ev["classes"].split(",")
            result["zero_shot"] = evaluate(zs_model, zs_tok, str(Path(ev["test_jsonl"]).resolve()), classes,
                                           ev.get("templates"), out / "zero_shot")
    acc.wait_for_everyone()
    return result


if __name__ == "__main__":
    from patches.brainfound.brainfound_cli import run_cli

    run_cli(main)
