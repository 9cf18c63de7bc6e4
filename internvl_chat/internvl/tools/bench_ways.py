"""The three ways ``bench_train`` trains, each run in a fresh process: ``python -m internvl.tools.bench_ways SPEC``.

``SPEC`` is a JSON file written by ``bench_train`` (model folders, meta JSON, batch size, steps, lr, seed, device,
and the way); the process writes ``SPEC``'s ``result`` path: per step its wall time, real (non-pad) tokens,
samples and loss, and the process's peak memory (``ru_maxrss`` of itself, and the largest of the processes it started,
DataLoader workers included; on CUDA
``torch.cuda.max_memory_allocated``). One process per way, so each peak is that way's own.

* ``plain``: what a transformers user writes. ``InternVLForConditionalGeneration.from_pretrained`` on the ``-hf``
  export of the same weights (no remote code), a hand loop: ``torch.optim.AdamW`` (fused exactly when the
  Trainer's default optimizer is), same lr and weight decay, gradient clipping at the Trainer's
  ``max_grad_norm``, same batch size, same rows in the same (file) order, right-padded batches.
  *Its data are pre-tokenised ids made with our ``RowProcessor``* (the finetune's own dataset class), built once
  before the loop as ``datasets.map`` would, and the preparation time is reported apart (``prep_seconds``).
  Why not transformers' processor: the export carries a tokenizer but no image-processor config, and its chat
  template has no ``{% generation %}`` markers, so transformers cannot produce the assistant-only ``labels`` by
  itself (every transformers SFT recipe masks labels with code of its own); and identical ids make the
  comparison one of training paths, not of tokenisations. Step time = collate + forward + backward + clip +
  optimizer step (the data are already in memory).
* ``plain_lazy`` (not in the default set): ``plain`` with each batch's samples built inside the timed step, as a
  transformers user's lazy ``Dataset`` would (the same dataset class, so the same per-sample work as ours): it
  separates the cost of building samples from the cost of the training loop.
* ``unpacked`` / ``packed``: the real finetune entry point (``internvl_chat_finetune.main``) in this process,
  no DeepSpeed, ``--train_sampling_strategy sequential`` (the same order as ``plain``), constant lr,
  ``--logging_steps 1``, one epoch. Per step, the Trainer's own log: ``num_input_tokens_seen`` (non-padding
  tokens) and our ``InternVLTrainer`` throughput fields; the step's wall time is ``new tokens /
  tokens_per_second`` (the time between two consecutive logs: the batch's loading and collation, forward,
  backward, optimizer step), its samples ``samples_per_second`` x that time (a pack counts its samples).
  ``packed`` adds ``--use_packed_ds True --max_packed_tokens N --num_images_expected M --loss_reduction R`` and
  trains one pack per step (``--per_device_train_batch_size 1``); its ``padding_share`` is the run's own log.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch


def peak_memory(device: str) -> dict:
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "peak_rss_subprocesses_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    if device == "cuda" and torch.cuda.is_available():
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# ------------------------------------------------------------------------------------------------ data
def training_samples(spec: dict, lazy: bool = False):
    """Every row of the meta JSON as the finetune's dataset builds it (same tokenizer, template, options): a list,
    or with ``lazy`` the dataset itself (each sample built when indexed)."""
    from internvl.data.collate import DataCollator  # noqa: F401  (same import cost as the finetune's)
    from internvl.model.checkpoint import read_tokenizer
    from internvl.model.internvl_chat import InternVLChatConfig
    from internvl.train.dataset import build_datasets

    tokenizer = read_tokenizer(spec["model"])
    config = InternVLChatConfig.from_pretrained(spec["model"])
    concat = build_datasets(spec["meta"], tokenizer, config, template_name=spec["template"],
                            max_seq_length=spec["max_seq_length"], data_options={"normalize_type": "imagenet"},
                            is_train=True, seed=spec["seed"])
    return concat if lazy else [concat[i] for i in range(len(concat))]


def hf_batch(samples: list[dict], pad_id: int, device: str, dtype) -> dict:
    """Right-padded ``input_ids``/``labels``/``attention_mask`` and the images as one ``[N, 3, H, W]`` tensor, the
    inputs ``InternVLForConditionalGeneration`` takes."""
    from internvl.data.collate import DataCollator

    batch = DataCollator(pad_id)(samples)
    out = {k: batch[k].to(device) for k in ("input_ids", "labels", "attention_mask")}
    items = [it for s in samples for it in s["pixel_values"]]
    if items:
        out["pixel_values"] = torch.stack(items).to(device=device, dtype=dtype)
    return out


# ------------------------------------------------------------------------------------------------ plain
def apply_plain_lora(model, rank: int):
    """peft LoRA on the language model's linear layers (InternVL's ``wrap_llm_lora``: alpha 2r, dropout 0.05)."""
    from peft import LoraConfig, get_peft_model

    targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05,
                                            target_modules=targets))


def trainer_uses_fused_adamw() -> bool:
    """Whether the Trainer's default optimizer (``TrainingArguments.optim``) is torch's fused AdamW."""
    import dataclasses

    import transformers

    field = {f.name: f for f in dataclasses.fields(transformers.TrainingArguments)}["optim"]
    return "fused" in str(field.default)


def run_plain(spec: dict) -> dict:
    from transformers import InternVLForConditionalGeneration

    device = spec["device"]
    t0 = time.perf_counter()
    samples = training_samples(spec, lazy=spec["way"] == "plain_lazy")
    prep = time.perf_counter() - t0
    model = InternVLForConditionalGeneration.from_pretrained(spec["hf_model"], dtype=torch.float32).to(device)
    if spec.get("lora"):
        model = apply_plain_lora(model, spec["lora"])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=spec["weight_decay"],
                            fused=trainer_uses_fused_adamw())
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bool(spec.get("bf16")))
    pad_id = spec["pad_token_id"]
    bsz = spec["batch_size"]
    steps = []
    for start in range(0, min(len(samples), spec["steps"] * bsz), bsz):
        t = time.perf_counter()
        rows = [samples[i] for i in range(start, min(start + bsz, len(samples)))]  # lazy: built here
        batch = hf_batch(rows, pad_id, device, torch.float32)
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec["max_grad_norm"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        value = loss.item()  # syncs a GPU, as the Trainer's per-step loss log does
        steps.append({"seconds": time.perf_counter() - t, "tokens": int(batch["attention_mask"].sum()),
                      "samples": len(rows), "loss": value})
    return {"steps": steps, "prep_seconds": prep, "prep_samples": len(samples)}


# ------------------------------------------------------------------------------------------------ ours
def finetune_argv(spec: dict, output_dir: str) -> list[str]:
    argv = ["--model_name_or_path", spec["model"], "--meta_path", spec["meta"], "--conv_style", spec["template"],
            "--output_dir", output_dir, "--overwrite_output_dir", "True", "--max_seq_length",
            str(spec["max_seq_length"]), "--grad_checkpoint", "False", "--per_device_train_batch_size",
            str(1 if spec["way"] == "packed" else spec["batch_size"]), "--gradient_accumulation_steps", "1", "--learning_rate", str(spec["lr"]),
            "--weight_decay", str(spec["weight_decay"]), "--max_grad_norm", str(spec["max_grad_norm"]),
            "--lr_scheduler_type", "constant", "--num_train_epochs", "1", "--logging_steps", "1",
            "--save_strategy", "no", "--report_to", "none", "--seed", str(spec["seed"]),
            "--dataloader_num_workers", str(spec["num_workers"]), "--train_sampling_strategy", "sequential",
            "--disable_tqdm", "True"]
    if spec.get("lora"):
        argv += ["--use_llm_lora", str(spec["lora"]), "--freeze_llm", "True", "--freeze_backbone", "True",
                 "--freeze_mlp", "True"]
    if spec.get("bf16"):
        argv += ["--bf16", "True"]
    if spec["way"] == "packed":
        argv += ["--use_packed_ds", "True", "--max_packed_tokens", str(spec["max_packed_tokens"]),
                 "--num_images_expected", str(spec["num_images_expected"]), "--loss_reduction",
                 spec["loss_reduction"]]
    return argv


def steps_from_log(log_history: list[dict]) -> list[dict]:
    """Per optimizer step (``--logging_steps 1``): wall seconds (new tokens / ``tokens_per_second``), real tokens,
    samples (``samples_per_second`` x seconds: a pack counts its samples), loss, and ``padding_share`` when
    logged."""
    steps, seen = [], 0
    for entry in log_history:
        if "loss" not in entry:
            continue
        tokens = int(entry["num_input_tokens_seen"]) - seen
        seen = int(entry["num_input_tokens_seen"])
        seconds = tokens / entry["tokens_per_second"]
        step = {"seconds": seconds, "tokens": tokens, "loss": entry["loss"],
                "samples": round(entry["samples_per_second"] * seconds)}
        if "padding_share" in entry:
            step["padding_share"] = entry["padding_share"]
        steps.append(step)
    return steps


def run_ours(spec: dict) -> dict:
    from internvl.train.internvl_chat_finetune import main as finetune_main

    out = str(Path(spec["work"]) / f"run_{spec['way']}")
    rc = finetune_main(finetune_argv(spec, out))
    if rc:
        raise SystemExit(rc)
    state = json.loads((Path(out) / "trainer_state.json").read_text(encoding="utf-8"))
    return {"steps": steps_from_log(state["log_history"]), "output_dir": out}


def profiled(runner, spec: dict) -> dict:
    """``runner(spec)`` under cProfile, into ``WORK/profile_WAY.txt``: the 45 functions of the training path
    (ours, the Trainer, accelerate, torch's optimizer and autograd, the data modules) with the most cumulative
    time, then the 25 of everything (imports included) with the most own time."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    result = prof.runcall(runner, spec)
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("cumulative").print_stats(r"(internvl|trainer|accelerate|optim|autograd|collate|tokeniz|PIL)",
                                               45)
    stats.sort_stats("tottime").print_stats(25)
    Path(spec["work"], f"profile_{spec['way']}.txt").write_text(buf.getvalue(), encoding="utf-8")
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.manual_seed(spec["seed"])
    if spec["device"] == "cpu" and spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    runner = run_plain if spec["way"] in ("plain", "plain_lazy") else run_ours
    if spec.get("profile"):
        result = profiled(runner, spec)
    else:
        result = runner(spec)
    result.update(way=spec["way"], torch_threads=torch.get_num_threads(), **peak_memory(spec["device"]))
    tmp = spec["result"] + ".tmp"
    Path(tmp).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, spec["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
