"""Supervised finetuning of an InternVL chat checkpoint on a meta JSON of JSONL datasets (HF Trainer + DeepSpeed).

    torchrun --nproc_per_node=$GPUS internvl_chat/internvl/train/internvl_chat_finetune.py \\
        --model_name_or_path pretrained/InternVL2-1B --meta_path data.json --conv_style Hermes-2 \\
        --output_dir work_dirs/x --deepspeed zero_stage1_config.json [any transformers TrainingArguments]

The arguments are InternVL's (``internvl.train.arguments``; ``python ... --help`` lists them) plus ours:
``--skip_bad_samples``/``--bad_sample_budget``, ``--vision_model``/``--vision_overrides``/``--projector``/
``--projector_config`` (replace the vision side of the loaded checkpoint, keeping its LLM) and ``--plugins``.
One JSON file as the only argument is read as all arguments.

What ``main`` does, in order:

1. Plugins (entry points, ``$INTERNVL_PLUGINS``, ``--plugins``) are imported before any registry lookup.
2. Resume point: ``--resume_from_checkpoint``, else the last *complete* ``checkpoint-N`` in ``output_dir`` unless
   ``--overwrite_output_dir`` (``internvl.train.trainer_utils``: checkpoints are written to a staging folder and
   renamed, so a half-written one is never picked).
3. Tokenizer (no remote code); InternVL's special tokens are added if missing, the LLM's embeddings resized and
   the new rows (input and output) set to the mean of the old ones.
4. Model (``InternVLChatModel.from_pretrained``) with the CLI's ``conv_style``, ``vision_select_layer``,
   ``dynamic_image_size``, ``use_thumbnail``, ``ps_version``, ``min/max_dynamic_patch`` written into its config
   (as InternVL does) and ``drop_path_rate`` into the encoder; ``down_sample_ratio`` and ``force_image_size``
   must match the checkpoint (no position-embedding resizing). Optionally a new vision encoder / projector.
   ``img_context_token_id`` from the tokenizer; ``use_cache`` off; attention SDPA unless flash-attn and CUDA are
   present (``--attn_implementation`` overrides); gradient checkpointing (non-reentrant) with
   ``--grad_checkpoint``.
5. Freezing / LoRA / ``unfreeze_lm_head`` / ``unfreeze_vit_layers`` (``internvl.train.freeze``), logged per module.
6. Data: ``build_datasets`` (meta JSON -> tokenised samples, bad-sample policy), optional sqrt resampling,
   with ``--use_packed_ds`` planned packs (``internvl.train.packing``; the LLM then attends per sample,
   ``internvl.model.varlen_attention``), ``DataCollator`` (``--loss_reduction`` weights).
7. ``InternVLTrainer.train``; then the model and tokenizer are saved into ``output_dir`` (files moved in
   atomically) with ``train_results.json`` and ``trainer_state.json`` (the loss curve, ``log_history``).

On a machine without CUDA everything runs on CPU (gloo; DeepSpeed with its CPU accelerator and torch's AdamW,
see ``internvl.train.arguments``); bf16 is the launcher's choice (``--bf16 True`` on GPUs only).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import sys

if __package__ in (None, ""):  # run as a script (torchrun .../internvl_chat_finetune.py): import `internvl` from
    _here = os.path.dirname(os.path.abspath(__file__))  # this checkout, and keep train/'s modules off sys.path
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(os.path.dirname(_here)))

import torch

if not torch.cuda.is_available():  # DeepSpeed's accelerator must be known before deepspeed is imported
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import transformers
from transformers import HfArgumentParser, set_seed

from internvl.fileio import atomic_write_text
from internvl.registry import add_plugins_argument, load_plugins
from internvl.train.arguments import DataTrainingArguments, ModelArguments, TrainingArguments
from internvl.constants import IMG_CONTEXT_TOKEN, SPECIAL_TOKENS
from internvl.train.freeze import configure_trainable, format_summary, trainable_summary
from internvl.errors import ConfigError, run_cli

logger = logging.getLogger("internvl.finetune")


def parse_args(argv: list[str] | None = None):
    """``(model_args, data_args, training_args, plugins)`` from the command line (or one JSON file)."""
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    add_plugins_argument(parser)
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        with open(argv[0], encoding="utf-8") as f:
            raw = json.load(f)
        plugins = raw.pop("plugins", [])
        model_args, data_args, training_args = parser.parse_dict(raw)
        return model_args, data_args, training_args, plugins
    model_args, data_args, training_args, extra = parser.parse_args_into_dataclasses(argv)
    return model_args, data_args, training_args, extra.plugins


def slurm_to_torch_env(env=os.environ) -> bool:
    """Under ``srun`` (``LAUNCHER=slurm``, as InternVL's srun scripts) every task is one process: give torch the
    ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_ADDR`` it expects from the SLURM variables. Returns whether
    it did (not under torchrun, which sets ``RANK`` itself)."""
    if env.get("LAUNCHER") != "slurm" or "SLURM_PROCID" not in env or "RANK" in env:
        return False
    env["RANK"] = env["SLURM_PROCID"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    env["WORLD_SIZE"] = env.get("SLURM_NTASKS", "1")
    if "SLURM_NTASKS_PER_NODE" in env:
        env["LOCAL_WORLD_SIZE"] = env["SLURM_NTASKS_PER_NODE"].split("(")[0]
    if "MASTER_ADDR" not in env:
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST") or env.get("SLURM_JOB_NODELIST")
        if not nodes:
            raise RuntimeError("LAUNCHER=slurm: no SLURM_NODELIST to take MASTER_ADDR from; set MASTER_ADDR")
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                               check=True, env=dict(env)).stdout.split()
        env["MASTER_ADDR"] = hosts[0]
    env.setdefault("MASTER_PORT", "29500")
    return True


def setup_logging(training_args) -> None:
    """transformers at its usual level (``--log_level``/``--log_level_replica``); ours at INFO on the main process."""
    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)], level=level, force=True)
    logging.getLogger("internvl").setLevel(min(level, logging.INFO) if training_args.should_log else level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.enable_explicit_format()


# ------------------------------------------------------------------------------------------------ tokenizer
def load_tokenizer(model_args, data_args):
    from internvl.model.checkpoint import read_tokenizer

    tokenizer = read_tokenizer(model_args.model_name_or_path, use_fast=model_args.use_fast_tokenizer)
    tokenizer.model_max_length = data_args.max_seq_length
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        raise ConfigError(f"{model_args.model_name_or_path}: the tokenizer has no pad token")
    return tokenizer


def add_special_tokens(tokenizer, model) -> int:
    """Add InternVL's special tokens the tokenizer lacks; new embedding rows = mean of the old rows."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if not missing:
        return 0
    old_len = len(tokenizer)
    tokenizer.add_tokens(missing, special_tokens=True)
    llm = model.language_model
    new_ids = tokenizer.convert_tokens_to_ids(missing)
    if max(new_ids) >= llm.get_input_embeddings().weight.shape[0]:
        llm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for emb in (llm.get_input_embeddings(), llm.get_output_embeddings()):
            if emb is None:
                continue
            weight = emb.weight
            weight[new_ids] = weight[:old_len].mean(dim=0, keepdim=True).to(weight.dtype)
    model.config.llm_config.vocab_size = llm.config.vocab_size
    logger.info("added special tokens %s (ids %s); embeddings now %d rows", missing, new_ids,
                llm.get_input_embeddings().weight.shape[0])
    return len(missing)


# ------------------------------------------------------------------------------------------------ model
# data flags InternVL writes into the model config (unset: the checkpoint's value stays, the one default)
DATA_CONFIG_FIELDS = ("dynamic_image_size", "use_thumbnail", "min_dynamic_patch", "max_dynamic_patch", "pad2square")


def load_model(model_args, data_args, training_args):
    from internvl.model.internvl_chat import InternVLChatModel

    overrides = dict(template=data_args.conv_style, select_layer=model_args.vision_select_layer,
                     ps_version=model_args.ps_version)
    overrides.update({k: getattr(data_args, k) for k in DATA_CONFIG_FIELDS if getattr(data_args, k) is not None})
    logger.info("loading %s", model_args.model_name_or_path)
    model = InternVLChatModel.from_pretrained(model_args.model_name_or_path, dtype=torch.float32, **overrides)
    if model_args.vision_model or model_args.projector:
        model = replace_vision_side(model, model_args, data_args)
    else:
        check_vision_geometry(model, data_args)
    if model_args.drop_path_rate:
        for encoder in model.vision_encoders().values():
            encoder.set_drop_path(model_args.drop_path_rate)
    if model_args.attn_implementation:
        model.language_model.set_attn_implementation(model_args.attn_implementation)
    model.language_model.config.use_cache = False
    model.config.use_cache = False
    return model


def check_vision_geometry(model, data_args) -> None:
    """InternVL asserts the pixel-shuffle ratio; it resizes position embeddings for another tile size, which we
    do not, so a different ``--force_image_size`` is an error rather than a silently different model."""
    cfg = model.config
    if abs(float(cfg.downsample_ratio) - data_args.down_sample_ratio) > 1e-9:
        raise ConfigError(f"--down_sample_ratio {data_args.down_sample_ratio} differs from the checkpoint's "
                         f"{cfg.downsample_ratio}")
    size = getattr(cfg.vision_config, "image_size", None)
    if data_args.force_image_size and size and data_args.force_image_size != cfg.image_size:
        raise ConfigError(f"--force_image_size {data_args.force_image_size} differs from the checkpoint's tile size "
                         f"{cfg.image_size}; resizing position embeddings is not supported: pass "
                         f"--force_image_size {cfg.image_size}")


def replace_vision_side(model, model_args, data_args):
    """New encoders / projectors / extra towers (``--vision_model [KIND=]NAME`` ...) around the loaded LLM
    (``internvl.model.towers.compose_towers``)."""
    from internvl.model.towers import compose_towers, parse_tower_flags, touches_primary

    changes = parse_tower_flags(model_args.vision_model, model_args.vision_overrides, model_args.projector,
                                model_args.projector_config)
    if any(touches_primary(model.config, c) for c in changes):  # a new primary projector takes --down_sample_ratio
        new = compose_towers(model, changes, downsample_ratio=data_args.down_sample_ratio)
    else:  # only extra towers: the loaded primary tower must keep its geometry, as without vision flags
        check_vision_geometry(model, data_args)
        new = compose_towers(model, changes)
    logger.info("vision side: %s (new parts start from their factories' weights); LLM kept from %s",
                {("primary" if k is None else k): v.config.encoder_name for k, v in new.vision_encoders().items()},
                model_args.model_name_or_path)
    return new


def enable_gradient_checkpointing(model) -> None:
    kwargs = {"use_reentrant": False}
    model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    for base in model.vision_encoders(unwrap=True).values():
        if base.supports_gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            logger.warning("--grad_checkpoint: encoder %r is not checkpointable; it runs without",
                           base.config.encoder_name)


@contextlib.contextmanager
def whole_model_per_process():
    """Build the model unpartitioned in every process, also under ZeRO-3.

    With a ZeRO-3 config transformers wraps every model construction in ``deepspeed.zero.Init`` (partitioned at
    creation); our checkpoint loader fills plain tensors, so the model is built whole here and DeepSpeed partitions
    it when the Trainer initialises the engine. The cost is one full fp32 copy per process while loading."""
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = ref


# ------------------------------------------------------------------------------------------------ data
def build_train_dataset(tokenizer, model, data_args, training_args):
    from internvl.train.dataset import build_datasets
    from internvl.train.sampling import TrainDataset

    if not data_args.meta_path:
        raise ConfigError("--meta_path is required")
    options = dict(normalize_type=data_args.normalize_type)  # tiling settings live in model.config (see load_model)
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    skip = data_args.bad_sample_budget if data_args.skip_bad_samples else False
    concat = build_datasets(data_args.meta_path, tokenizer, model.config, template_name=data_args.conv_style,
                            max_seq_length=data_args.max_seq_length, data_options=options, is_train=True,
                            skip_bad_samples=skip, seed=seed)
    train = TrainDataset(concat, resample=data_args.use_data_resampling, seed=seed)
    if not data_args.use_packed_ds:
        return train
    from internvl.train.packing import PackedDataset

    if training_args.train_sampling_strategy == "group_by_length":  # InternVL's packed scripts pass both
        logger.warning("--group_by_length is ignored with --use_packed_ds: packs are planned by size; the packs "
                       "are drawn in random order")
        training_args.train_sampling_strategy = "random"
    logger.info("--use_packed_ds: packs of <= %d tokens and <= %d vision items (--max_buffer_size %d has no effect: "
                "packs are planned over the whole dataset)", data_args.max_packed_tokens,
                data_args.num_images_expected, data_args.max_buffer_size)
    return PackedDataset(train, max_packed_tokens=data_args.max_packed_tokens,
                         num_images_expected=data_args.num_images_expected)


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    """The finetune under the error policy (``internvl.errors.run_cli``): bad input is one ``error:`` line, exit 2."""
    return run_cli(run, argv)


def die_with_launcher(env=os.environ) -> None:
    """torchrun starts each worker in a session of its own, so ``kill -9`` of the launcher's process group would
    leave the workers running (and writing checkpoints). On Linux a worker asks the kernel for SIGKILL when its
    parent, torchrun's agent, dies."""
    if "TORCHELASTIC_RUN_ID" not in env or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() == 1:  # the agent was already gone before the request
        os._exit(1)


def run(argv: list[str] | None = None) -> int:
    die_with_launcher()
    slurm_to_torch_env()
    model_args, data_args, training_args, plugins = parse_args(argv)
    setup_logging(training_args)
    load_plugins(plugins)
    from internvl.data.collate import DataCollator
    from internvl.train.trainer_utils import InternVLTrainer, finished_run, resolve_resume, write_finished

    if not model_args.model_name_or_path:
        raise ConfigError("--model_name_or_path is required (an InternVL chat checkpoint)")
    logger.warning("process %d/%d, device %s, bf16 %s, deepspeed %s", training_args.process_index,
                   training_args.world_size, training_args.device, training_args.bf16, bool(training_args.deepspeed))
    done = finished_run(training_args)
    if done is not None:
        logger.warning("%s already holds a finished run (step %s, epoch %s): nothing to do; pass "
                       "--overwrite_output_dir True to train again, or a larger --max_steps / --num_train_epochs "
                       "to continue", training_args.output_dir, done["global_step"], done["epoch"])
        return 0
    resume = resolve_resume(training_args)
    if training_args.deepspeed:
        from internvl.train.safe_resume import use_weights_only_deepspeed_loads

        use_weights_only_deepspeed_loads(training_args.trust_checkpoint_pickles, training_args.deepspeed)
    set_seed(training_args.seed)

    tokenizer = load_tokenizer(model_args, data_args)
    with whole_model_per_process():
        model = load_model(model_args, data_args, training_args)
        if data_args.use_packed_ds:
            from internvl.model.varlen_attention import packed_attention

            attn = packed_attention(model_args.attn_implementation)
            model.language_model.set_attn_implementation(attn)
            logger.info("--use_packed_ds: LLM attention %s", attn)
        add_special_tokens(tokenizer, model)
        model.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        if model_args.grad_checkpoint:
            enable_gradient_checkpointing(model)
        configure_trainable(model, model_args)
    summary = trainable_summary(model)
    logger.info(format_summary(summary))
    if not any(t for t, _ in summary.values()):
        raise ConfigError("nothing to train: every parameter is frozen (check --freeze_* and LoRA flags)")

    train_dataset = build_train_dataset(tokenizer, model, data_args, training_args)
    collator = DataCollator.from_tokenizer(tokenizer, packed=data_args.use_packed_ds,
                                           loss_reduction=data_args.loss_reduction,
                                           loss_reduction_all_gather=data_args.loss_reduction_all_gather)
    trainer = InternVLTrainer(model=model, args=training_args, train_dataset=train_dataset,
                              data_collator=collator, processing_class=tokenizer)
    if data_args.loss_reduction != "token":  # the loss is normalised per micro-batch (InternVL), not by the
        trainer.model_accepts_loss_kwargs = False  # Trainer's token count: it then averages over accumulation
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_final_model(training_args.output_dir)
    if trainer.args.should_save:
        trainer.log_metrics("train", result.metrics)
        out = training_args.output_dir
        atomic_write_text(json.dumps(result.metrics, indent=2) + "\n", os.path.join(out, "train_results.json"))
        state = json.dumps(dataclasses.asdict(trainer.state), indent=2, sort_keys=True) + "\n"
        atomic_write_text(state, os.path.join(out, "trainer_state.json"))
        write_finished(out, trainer.state, training_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
