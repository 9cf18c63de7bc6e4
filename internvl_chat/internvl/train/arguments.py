"""Command-line arguments of the finetune entry point: InternVL's names and meanings, plus ours.

Three dataclasses, parsed by ``transformers.HfArgumentParser`` (as InternVL does):

* ``ModelArguments``: what to load and what to train (InternVL's ``freeze_*``, ``unfreeze_*``, ``use_*_lora``,
  ``vision_select_layer``, ``drop_path_rate``, ``grad_checkpoint``, ``ps_version``) and ours to replace the vision
  side of a loaded checkpoint (``--vision_model``/``--vision_overrides``/``--projector``/``--projector_config``).
* ``DataTrainingArguments``: InternVL's data options (``meta_path``, ``conv_style``, ``max_seq_length``,
  ``force_image_size``, ``dynamic_image_size`` ...) and ours for bad samples (``--skip_bad_samples``,
  ``--bad_sample_budget``).
* ``TrainingArguments``: transformers' own, plus the InternVL-script flags transformers 5 removed, mapped onto
  their successors so InternVL's launch scripts keep working: ``--overwrite_output_dir`` (here: start fresh
  instead of auto-resuming), ``--evaluation_strategy`` -> ``eval_strategy``, ``--group_by_length`` ->
  ``train_sampling_strategy=group_by_length``, ``--warmup_ratio`` -> ``warmup_steps`` (a float < 1 is a ratio).

Defaults that differ from transformers': ``report_to=tensorboard``, non-padding token counting on (for tokens/s),
``remove_unused_columns=False`` (the model takes ``pixel_values``/``image_flags``, which the Trainer would drop).
On a machine without CUDA ``use_cpu`` is switched on: accelerate only sets up a multi-process CPU group (gloo)
when told it runs on CPU, also under DeepSpeed's CPU accelerator.

``--deepspeed NAME.json`` not found in the working directory resolves against ``internvl_chat/`` (where InternVL's
``zero_stage{1,2,3}_config.json`` live), so the launchers run from the repo root. Without CUDA (or without a CUDA
toolkit to build DeepSpeed's fused Adam) the config's Adam/AdamW is switched to torch's (``torch_adam``); see
``deepspeed_config_for_device``.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import torch
import transformers

from internvl.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "InternVL chat checkpoint to finetune (config, safetensors, tokenizer)."})
    freeze_llm: bool = field(default=False, metadata={"help": "Freeze the language model (and put it in eval mode)."})
    freeze_backbone: bool = field(default=False, metadata={"help": "Freeze the vision encoder."})
    freeze_mlp: bool = field(default=False, metadata={"help": "Freeze the projector (mlp1)."})
    unfreeze_vit_layers: int = field(
        default=0, metadata={"help": "Train vision layers [N:] even with --freeze_backbone (N < 0: the last |N|)."})
    vision_select_layer: int = field(default=-1, metadata={"help": "Vision layer whose output feeds the projector."})
    use_backbone_lora: int = field(default=0, metadata={"help": "LoRA rank for the vision encoder (0: off)."})
    use_llm_lora: int = field(default=0, metadata={"help": "LoRA rank for the language model (0: off)."})
    unfreeze_lm_head: bool = field(default=False, metadata={"help": "Train lm_head's weight (also with LoRA)."})
    grad_checkpoint: bool = field(default=True, metadata={"help": "Gradient checkpointing (LLM and vision encoder)."})
    drop_path_rate: float = field(default=0.0, metadata={"help": "Stochastic depth of the vision encoder."})
    ps_version: str = field(default="v2", metadata={"help": "Pixel-shuffle version: v1 (InternVL 1.x) or v2."})
    use_fast_tokenizer: bool = field(default=False, metadata={"help": "Load the fast (Rust) tokenizer if both exist."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "LLM attention: sdpa | eager | flash_attention_2. Default: flash_attention_2 "
                                        "when flash_attn is installed and CUDA is present, sdpa otherwise."})
    vision_model: list[str] = field(default_factory=list, metadata={
        "action": "append", "help": "[KIND=]NAME, repeatable: bare, replace the checkpoint's vision encoder; KIND=NAME, "
                                    "the tower reading KIND gets encoder NAME (a new tower if none reads it). The "
                                    "LLM is kept; new encoders and projectors start from their factories' weights."})
    vision_overrides: list[str] = field(default_factory=list, metadata={
        "action": "append", "help": "[KIND=]JSON, repeatable: config overrides of that tower's new encoder."})
    projector: list[str] = field(default_factory=list, metadata={
        "action": "append", "help": "[KIND=]NAME, repeatable: that tower's projector."})
    projector_config: list[str] = field(default_factory=list, metadata={
        "action": "append", "help": "[KIND=]JSON, repeatable: options of that tower's projector."})

    def __post_init__(self):
        for name in ("vision_model", "vision_overrides", "projector", "projector_config"):
            setattr(self, name, _flat_strings(getattr(self, name)))
        for name in ("use_backbone_lora", "use_llm_lora"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} is a LoRA rank and must be >= 0, got {getattr(self, name)}")
        from internvl.model.towers import parse_tower_flags

        parse_tower_flags(self.vision_model, self.vision_overrides, self.projector, self.projector_config)


@dataclass
class DataTrainingArguments:
    meta_path: str | None = field(default=None, metadata={"help": "InternVL meta JSON listing the training JSONLs."})
    conv_style: str = field(default="internlm2-chat", metadata={"help": "Chat template; must match the checkpoint."})
    max_seq_length: int = field(default=8192, metadata={"help": "Longer samples are truncated (never an image span)."})
    force_image_size: int | None = field(
        default=None, metadata={"help": "Tile size; must equal the checkpoint's (default: the checkpoint's)."})
    down_sample_ratio: float = field(default=0.5, metadata={"help": "Pixel-shuffle ratio (= the checkpoint's)."})
    pad2square: bool | None = field(default=None, metadata={
        "help": "Pad images to square (InternVL 1.x). Unset: the checkpoint's setting."})
    dynamic_image_size: bool | None = field(default=None, metadata={
        "help": "Dynamic tiling of images. Unset: the checkpoint's setting."})
    use_thumbnail: bool | None = field(default=None, metadata={
        "help": "Append a thumbnail tile when an image is tiled. Unset: the checkpoint's setting."})
    min_dynamic_patch: int | None = field(default=None, metadata={
        "help": "Minimum tiles per image. Unset: the checkpoint's setting."})
    max_dynamic_patch: int | None = field(default=None, metadata={
        "help": "Maximum tiles per image (a meta-JSON entry may override it). Unset: the checkpoint's setting "
                "(InternVL's config default 6); InternVL's scripts pass it explicitly."})
    normalize_type: str = field(default="imagenet", metadata={"help": "imagenet | clip | siglip."})
    use_data_resampling: bool = field(
        default=False, metadata={"help": "Sample datasets with sqrt(length) weights, with replacement (InternVL)."})
    skip_bad_samples: bool = field(
        default=False, metadata={"help": "Skip unreadable/malformed samples (counted and logged) instead of failing."})
    bad_sample_budget: float = field(
        default=0.01, metadata={"help": "With --skip_bad_samples: the most bad lines tolerated per dataset, as a "
                                        "fraction in [0, 1) of its lines; one more stops training."})
    use_packed_ds: bool = field(default=False, metadata={
        "help": "Pack whole samples into rows of --max_packed_tokens (planned ahead; see internvl.train.packing)."})
    max_packed_tokens: int = field(default=8192, metadata={"help": "Tokens per packed row (InternVL's default)."})
    num_images_expected: int = field(default=40, metadata={
        "help": "Vision items (tiles, volumes ...) per packed row at most (InternVL's default 40)."})
    max_buffer_size: int = field(default=20, metadata={
        "help": "Accepted for InternVL scripts: its greedy packer's buffer count. Packs are planned over the whole "
                "dataset here, so it has no effect."})
    loss_reduction: str = field(default="token", metadata={
        "help": "token | sample | square: each trained token weighs 1, 1/n or 1/sqrt(n) (n: its sample's trained "
                "tokens), InternVL's len2weight. Packed or not."})
    loss_reduction_all_gather: bool = field(default=False, metadata={
        "help": "With sample/square: divide by the weight sum averaged over all ranks (InternVL)."})

    def __post_init__(self):
        if self.loss_reduction not in ("token", "sample", "square"):
            raise ConfigError(f"--loss_reduction must be token, sample or square, got {self.loss_reduction!r}")
        if self.use_packed_ds and (self.max_packed_tokens <= 0 or self.num_images_expected < 0):
            raise ConfigError(f"--max_packed_tokens must be > 0 and --num_images_expected >= 0 (got "
                              f"{self.max_packed_tokens}, {self.num_images_expected})")
        if not 0 <= self.bad_sample_budget < 1:
            raise ConfigError(f"--bad_sample_budget must be a fraction in [0, 1), got {self.bad_sample_budget}")
        if self.normalize_type not in ("imagenet", "clip", "siglip"):
            raise ConfigError(f"--normalize_type must be imagenet, clip or siglip, got {self.normalize_type!r}")


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    report_to: None | str | list[str] = field(default="tensorboard", metadata={"help": "Logging integrations."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep every collated key (pixel_values...)."})
    include_num_input_tokens_seen: str = field(
        default="non_padding", metadata={"help": "Count tokens seen (for tokens/s): all | non_padding | no."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start from the model, ignoring checkpoints in output_dir (no auto-resume)."})
    trust_checkpoint_pickles: bool = field(default=False, metadata={
        "help": "Let DeepSpeed unpickle its checkpoint files without restriction when resuming (they can run code). "
                "Off: they are read weights-only and a file that holds anything but tensors and DeepSpeed's own "
                "data classes is refused. Only for checkpoints you made yourself."})
    evaluation_strategy: str | None = field(default=None, metadata={"help": "InternVL/transformers-4 name of "
                                                                             "--eval_strategy."})
    group_by_length: bool = field(default=False, metadata={"help": "InternVL/transformers-4 name of "
                                                                   "--train_sampling_strategy group_by_length."})
    warmup_ratio: float | None = field(default=None, metadata={"help": "InternVL/transformers-4 name: warmup as a "
                                                                       "fraction of the steps (sets warmup_steps)."})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={
        "help": "DDP looks for parameters without gradient every step (slow). Off: every tower runs on every step "
                "(dummy items for absent kinds), so none is unused; turn it on for a model that skips modules."})

    def __post_init__(self):
        if self.evaluation_strategy is not None:
            self.eval_strategy = self.evaluation_strategy
        if self.group_by_length:
            self.train_sampling_strategy = "group_by_length"
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ConfigError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            self.warmup_steps = self.warmup_ratio
        if not torch.cuda.is_available() and not self.use_cpu:
            self.use_cpu = True
        self.deepspeed = deepspeed_config_for_device(resolve_deepspeed_config(self.deepspeed))
        super().__post_init__()


def _flat_strings(value) -> list[str]:
    """A repeatable flag's values: argparse gives a list of lists (``action=append`` with ``nargs=+``), a JSON
    arguments file a string or a list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [v for item in value for v in _flat_strings(item)]


def resolve_deepspeed_config(path: str | None) -> str | None:
    """A bare config name not found in the working directory is looked up next to InternVL's own copies."""
    if not path or os.path.exists(path) or os.path.isabs(path):
        return path
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (os.path.dirname(os.path.dirname(here)), os.path.dirname(here)):  # internvl_chat/, internvl/
        candidate = os.path.join(folder, path)
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f"--deepspeed {path}: not found in {os.getcwd()} nor next to internvl_chat/")


def deepspeed_config_for_device(path: str | None):
    """The DeepSpeed config to use. DeepSpeed's Adam/AdamW is a JIT-compiled extension (CPU: a C++ build, ~75 s
    measured on 2 cores; GPU: needs nvcc). Where it cannot or should not be built (no CUDA, or CUDA without a CUDA
    toolkit) the optimizer is told to use torch's implementation (``torch_adam``) and the config is returned as a
    dict; otherwise the file path is returned unchanged."""
    if not path:
        return path
    if torch.cuda.is_available():
        from torch.utils.cpp_extension import CUDA_HOME

        if CUDA_HOME is not None:
            return path
        reason = "no CUDA toolkit (nvcc) to build DeepSpeed's fused Adam"
    else:
        reason = "no CUDA"
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    opt = config.get("optimizer")
    offload = (config.get("zero_optimization") or {}).get("offload_optimizer")
    if opt and str(opt.get("type", "")).lower() in ("adam", "adamw") and not offload:
        opt.setdefault("params", {})["torch_adam"] = True
        logger.info("%s: DeepSpeed optimizer %s uses torch's implementation (torch_adam)", reason, opt["type"])
    return config


__all__ = ["DataTrainingArguments", "ModelArguments", "TrainingArguments", "deepspeed_config_for_device",
           "resolve_deepspeed_config"]
