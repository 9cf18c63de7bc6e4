"""Training throughput: the same model on the same length-skewed data, trained three ways in one run.

    python -m internvl.tools.bench_train [--work work_dirs/bench_train] [--model pretrained/InternVL-tiny]
        [--rows 240] [--batch-size 4] [--warmup-steps 3] [--dataloader-num-workers 0]
        [--max-packed-tokens 1024] [--num-images-expected 8] [--loss-reduction token] [--ways plain,unpacked,packed]
        [--threads 1] [--repeats 1] [--profile]
    python -m internvl.tools.bench_train --device cuda --arch internvl2-1b [--dry-run]

1. ``bench_data.write_skewed_dataset`` writes a seeded set into ``WORK/data`` (half one-image rows with short
   answers, half text-only long reports; images one tile in size, so every way sees one item per image row).
2. Each way trains one epoch over those rows in a fresh process (``internvl.tools.bench_ways``, whose docstring
   says exactly what each way does): ``plain`` (``transformers.InternVLForConditionalGeneration`` on the
   ``-hf`` export of the same weights, a hand loop, padded batches), ``unpacked`` (our finetune entry point) and
   ``packed`` (the same with ``--use_packed_ds``). Same batch size (``packed``: one pack per step), lr, seed,
   weight decay, gradient clipping, row order (file order; ``sequential`` sampler).
3. The first ``--warmup-steps`` steps of every way are left out of the rates. Real tokens are non-padding tokens
   (image context tokens included); padding share = pad slots / all slots over the whole epoch (``bench_data``),
   checked against the real tokens each run counted. Peak memory is the way's own process (CPU: max RSS; CUDA:
   ``max_memory_allocated``).
4. One table on stdout, ``WORK/bench_train.json`` and a bar chart ``WORK/bench_train.png``. ``--repeats R`` runs
   the ways round-robin R times; each way's row is its median-rate run, the JSON keeps every run; the ratios are
   the medians of the round-by-round ratios (a shared machine's load moved single runs by a factor of 2).

CPU threads: every way runs with ``--threads`` torch/OpenMP threads (default 1). On the shared 2-core machine the
default of 2 threads made the same steps 5-17x slower (OpenMP workers waiting on cores other processes hold), so
2 threads measured the machine's load, not the training path. ``--profile`` runs each way under cProfile and
writes ``WORK/profile_WAY.txt``.

``--arch internvl2-1b`` builds an InternVL2-1B-shaped model (InternViT-300M-448px + Qwen2-0.5B, 938M parameters)
with random weights and the ``--model`` folder's tokenizer (its ids are a subset of the 151,655-row vocabulary),
trained in bf16 with LLM LoRA rank 16 (vision and projector frozen) on 448 px images. ``--dry-run`` prints the
plan (shapes, parameter count from a model built on the ``meta`` device, the finetune flags) without allocating
weights or training. Bad flags: one ``error:`` line, exit status 2 (``internvl.errors.run_cli``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from internvl.errors import ConfigError, run_cli
from internvl.fileio import atomic_write_text
from internvl.tools.bench_data import padded_batches, total, write_skewed_dataset

WAYS = ("plain", "unpacked", "packed")
EXTRA_WAYS = ("plain_lazy",)  # plain with samples built inside the timed loop (bench_ways); on request only
# InternVL2-1B: InternViT-300M-448px + Qwen2-0.5B-Instruct (research note internvl.md, sections 3.1 and 6.1)
INTERNVL2_1B_VISION = dict(image_size=448, patch_size=14, hidden_size=1024, num_hidden_layers=24,
                           num_attention_heads=16, intermediate_size=4096, qkv_bias=True, norm_type="layer_norm",
                           qk_normalization=False, drop_path_rate=0.0)
INTERNVL2_1B_LLM = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=896,
                        intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                        vocab_size=151655, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                        tie_word_embeddings=False, use_sliding_window=False)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one error: line (run_cli), not argparse's usage + message
        raise ConfigError(f"bench_train: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m internvl.tools.bench_train", description=__doc__.split("\n")[0])
    p.add_argument("--work", default="work_dirs/bench_train", help="data, runs and results go here")
    p.add_argument("--model", default="pretrained/InternVL-tiny",
                   help="checkpoint to train (tiny); its tokenizer for --arch internvl2-1b")
    p.add_argument("--arch", default="tiny", choices=("tiny", "internvl2-1b"))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--rows", type=int, default=240)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--warmup-steps", type=int, default=3, help="steps left out of the rates, in every way")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch/OpenMP threads of every way on CPU (OMP_NUM_THREADS); 1: see the README section")
    p.add_argument("--dataloader-num-workers", type=int, default=0)
    p.add_argument("--max-seq-length", type=int, default=1024)
    p.add_argument("--max-packed-tokens", type=int, default=1024)
    p.add_argument("--num-images-expected", type=int, default=8)
    p.add_argument("--loss-reduction", default="token", choices=("token", "sample", "square"))
    p.add_argument("--ways", default=",".join(WAYS), help="comma-separated subset of plain,unpacked,packed")
    p.add_argument("--repeats", type=int, default=1,
                   help="run the ways round-robin this many times; each way's row is its median-rate run")
    p.add_argument("--profile", action="store_true",
                   help="run every way under cProfile (slower) and write WORK/profile_WAY.txt")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the model's size; train nothing")
    return p


def check_args(args) -> None:
    args.ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    if not args.ways or any(w not in WAYS + EXTRA_WAYS for w in args.ways):
        raise ConfigError(f"--ways {','.join(args.ways)}: each must be one of {', '.join(WAYS + EXTRA_WAYS)}")
    for name in ("rows", "batch_size", "threads", "repeats", "max_seq_length", "max_packed_tokens", "num_images_expected"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup_steps < 0 or args.dataloader_num_workers < 0:
        raise ConfigError("--warmup-steps and --dataloader-num-workers must be >= 0")
    steps = -(-args.rows // args.batch_size)
    if args.warmup_steps >= steps:
        raise ConfigError(f"--warmup-steps {args.warmup_steps} leaves nothing to time: {args.rows} rows at batch "
                          f"size {args.batch_size} are {steps} steps")
    if not args.lr > 0:
        raise ConfigError(f"--lr must be > 0, got {args.lr}")
    if args.device == "cuda" and not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device on this machine (--dry-run only builds the plan)")
    if not (Path(args.model) / "config.json").is_file():
        raise FileNotFoundError(f"{args.model}: no checkpoint (config.json) here; build the tiny one with "
                                f"python pretrained/build_tiny.py")


def packing_available() -> bool:
    """Whether the finetune entry point takes ``--use_packed_ds`` (sequence packing)."""
    from internvl.train.arguments import DataTrainingArguments

    return "use_packed_ds" in {f.name for f in dataclasses.fields(DataTrainingArguments)}


# ------------------------------------------------------------------------------------------------ model
def internvl2_1b_config(tokenizer):
    from internvl.model.internvl_chat import InternVLChatConfig

    llm = dict(INTERNVL2_1B_LLM, bos_token_id=None, pad_token_id=tokenizer.pad_token_id,
               eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    if len(tokenizer) > llm["vocab_size"]:
        raise ConfigError(f"{len(tokenizer)} tokens do not fit InternVL2-1B's {llm['vocab_size']}-row vocabulary")
    return InternVLChatConfig.build(vision="intern_vit", vision_overrides=INTERNVL2_1B_VISION, llm_config=llm,
                                    template="internvl2_5", downsample_ratio=0.5, dynamic_image_size=True,
                                    use_thumbnail=True, max_dynamic_patch=6, select_layer=-1)


def count_parameters_on_meta(config) -> int:
    """Parameters of the model ``config`` describes, built on the ``meta`` device (no memory allocated)."""
    import torch

    from internvl.model.internvl_chat import InternVLChatModel

    with torch.device("meta"):
        model = InternVLChatModel(config)
    return sum(p.numel() for p in model.parameters())


def model_for_arch(args, work: Path) -> Path:
    """The checkpoint the ways train: ``--model`` for tiny; an InternVL2-1B-shaped random one otherwise."""
    if args.arch == "tiny":
        return Path(args.model).resolve()
    out = work / "model-internvl2-1b"
    if not (out / "config.json").is_file():
        import torch

        from internvl.fileio import atomic_directory
        from internvl.model.checkpoint import read_tokenizer
        from internvl.model.internvl_chat import InternVLChatModel

        tokenizer = read_tokenizer(args.model)
        torch.manual_seed(args.seed)
        model = InternVLChatModel(internvl2_1b_config(tokenizer))
        with atomic_directory(out) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return out.resolve()


# ------------------------------------------------------------------------------------------------ running
def base_spec(args, work: Path, model: Path, meta: Path, tokenizer) -> dict:
    import transformers

    defaults = transformers.TrainingArguments(output_dir=str(work / "unused"), use_cpu=args.device == "cpu")
    one_1b = args.arch == "internvl2-1b"
    return {"model": str(model), "hf_model": str(work / "model-hf"), "meta": str(meta), "work": str(work),
            "template": "internvl2_5", "max_seq_length": args.max_seq_length, "batch_size": args.batch_size,
            "steps": -(-args.rows // args.batch_size), "lr": args.lr, "weight_decay": 0.0,
            "max_grad_norm": defaults.max_grad_norm, "seed": args.seed, "device": args.device,
            "num_workers": args.dataloader_num_workers, "threads": args.threads, "pad_token_id": tokenizer.pad_token_id,
            "max_packed_tokens": args.max_packed_tokens, "num_images_expected": args.num_images_expected,
            "loss_reduction": args.loss_reduction, "lora": 16 if one_1b else 0, "bf16": one_1b,
            "profile": args.profile}


def run_way(spec: dict, way: str, work: Path) -> dict:
    """Run one way in a fresh process; its log goes to ``WORK/logs/WAY.log`` (the last run's)."""
    spec = dict(spec, way=way, result=str(work / f"result_{way}.json"))
    spec_path = work / f"spec_{way}.json"
    spec_path.write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    (work / "logs").mkdir(exist_ok=True)
    log = work / "logs" / f"{way}.log"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", INTERNVL_NO_PLUGINS="1")
    if spec["device"] == "cpu":
        env.update(OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    Path(spec["result"]).unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run([sys.executable, "-m", "internvl.tools.bench_ways", str(spec_path)], stdout=fh,
                              stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0 or not Path(spec["result"]).is_file():
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"way {way!r} exited {proc.returncode}; see {log} (last line: {tail[0][:300]})")
    result = json.loads(Path(spec["result"]).read_text(encoding="utf-8"))
    result["process_seconds"] = time.perf_counter() - t0
    return result


def sample_lengths(spec: dict) -> list[int]:
    """Tokens of every row as the finetune builds it (file order)."""
    from internvl.tools.bench_ways import training_samples

    return [len(s["input_ids"]) for s in training_samples(spec)]


def dry_run(args, work: Path, spec: dict) -> None:
    from internvl.model.checkpoint import read_tokenizer
    from internvl.model.internvl_chat import InternVLChatConfig
    from internvl.tools.bench_ways import finetune_argv

    if args.arch == "internvl2-1b":
        config = internvl2_1b_config(read_tokenizer(args.model))
    else:
        config = InternVLChatConfig.from_pretrained(args.model)
    vc, lc = config.vision_config, config.llm_config
    print(f"arch {args.arch}: vision {vc.encoder_name} {vc.num_hidden_layers}x{vc.hidden_size} at "
          f"{config.image_size}px ({config.num_image_token} tokens per tile); LLM {lc.model_type} "
          f"{lc.num_hidden_layers}x{lc.hidden_size}, vocab {lc.vocab_size}; "
          f"{count_parameters_on_meta(config):,} parameters (counted on the meta device)")
    print(f"device {args.device}, bf16 {spec['bf16']}, LLM LoRA rank {spec['lora'] or 'off'}; {args.rows} rows, "
          f"batch {args.batch_size}, {spec['steps']} steps per unpacked epoch, warm-up {args.warmup_steps}")
    for way in args.ways:
        if way.startswith("plain"):
            print(f"{way}: export -hf, InternVLForConditionalGeneration hand loop (AdamW, padded batches)")
        else:
            print(f"{way}: internvl_chat_finetune {' '.join(finetune_argv(dict(spec, way=way), str(work / f'run_{way}')))}")


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    from internvl.model.checkpoint import read_tokenizer

    tokenizer = read_tokenizer(args.model)
    if args.dry_run:
        model = Path(args.model) if args.arch == "tiny" else work / "model-internvl2-1b"
        dry_run(args, work, base_spec(args, work, model.resolve(), work / "data" / "meta.json", tokenizer))
        return 0
    model = model_for_arch(args, work)
    from internvl.model.internvl_chat import InternVLChatConfig

    image_size = InternVLChatConfig.from_pretrained(model).image_size
    meta = write_skewed_dataset(work / "data", rows=args.rows, image_size=image_size, seed=args.seed)
    spec = base_spec(args, work, model, meta, tokenizer)
    if {"plain", "plain_lazy"} & set(args.ways):
        from internvl.tools.export_hf import export

        export(str(model), spec["hf_model"])
    lengths = sample_lengths(spec)
    skipped, results = {}, {way: [] for way in args.ways}
    if "packed" in args.ways and not packing_available():
        skipped["packed"] = "not available (this checkout's finetune has no --use_packed_ds)"
        del results["packed"]
    for repeat in range(args.repeats):
        for way in results:
            print(f"== {way} (run {repeat + 1} of {args.repeats}) ...", flush=True)
            results[way].append(run_way(spec, way, work))
    from internvl.tools.bench_report import format_table, median_run, paired_ratios, plot, ratios, summarise

    rows = {way: median_run([summarise(way, res, args.warmup_steps, lengths, args.batch_size) for res in runs])
            for way, runs in results.items()}
    report = {"command": "python -m internvl.tools.bench_train " + " ".join(argv if argv is not None else sys.argv[1:]),
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "machine": machine(),
              "settings": {k: v for k, v in spec.items() if k not in ("work", "pad_token_id")},
              "rows": args.rows, "warmup_steps": args.warmup_steps, "ways": rows, "skipped": skipped,
              "ratios_real_tokens_per_s": ratios(rows), "paired_ratios_per_round": paired_ratios(rows)}
    table = format_table(rows, skipped)
    ratio_line = ", ".join(f"{k} {v:.2f}x" for k, v in report["ratios_real_tokens_per_s"].items())
    print(table)
    how = f"median of {args.repeats} round-by-round ratios" if args.repeats > 1 else "one run each"
    print(f"real tokens/s ratios ({how}): {ratio_line or 'n/a'}")
    if args.repeats > 1:
        for name, values in report["paired_ratios_per_round"].items():
            print(f"  {name} round by round: {', '.join(f'{v:.2f}x' for v in values)}")
    atomic_write_text(json.dumps(report, indent=1) + "\n", str(work / "bench_train.json"))
    if rows:
        plot(rows, work / "bench_train.png", f"{args.arch}, {args.device}, {args.rows} rows, batch {args.batch_size}")
    print(f"wrote {work / 'bench_train.json'} and {work / 'bench_train.png'}")
    return 0


def machine() -> str:
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


def main(argv=None) -> int:
    """The command line under the error policy: one ``error:`` line and exit status 2 for bad flags."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
