"""The NeuroVFM-shaped YAML config of ``python -m patches.neuro.train``: schema, loading, backbone mapping.

Sections (NeuroVFM's ``train/config/*_example.yaml`` and its training guide; every key they use is known here):
``infra``, ``data`` (+ ``dataset.{train,val}``, ``loader.{train,val}``), ``system`` (``which`` picks
``VisionPretrainingSystem`` or ``VisionClassificationSystem``, whose ``params`` differ), ``training``.
Our additions (documented in ``patches/neuro/README.md``): ``data.preprocess`` (``PreprocessConfig`` fields, e.g.
``target_spacing``), ``data.augment`` (``AugmentConfig`` fields), ``predictor_cf.mask_cf`` (JEPA target blocks),
``model_hyperparams.freeze_backbone``, and registered neuro encoder names (``neurovfm_tokens_tiny``,
``brain3d_vit_tiny`` ...) as ``vision_backbone_cf.which`` with encoder kwargs as ``params``.

``load_config(path) -> dict`` (normalised, defaults filled) raises ``ConfigError("<key>: <reason>")``.
``backbone_spec(cf) -> (encoder_name, overrides)`` maps ``vision_backbone_cf`` to a registered encoder.
"""
from __future__ import annotations

import math

import yaml

from patches.neuro.train.schema import (ConfigError, Field, anything, boolean, choice, integer,
                                        mapping, number, optional, seq, string, validate)

PRETRAIN, CLASSIFY = "VisionPretrainingSystem", "VisionClassificationSystem"
VIT_SIZES = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12),
             "vit_large": (1024, 24, 16), "vit_huge": (1280, 32, 16)}
NEURO_ENCODERS = ("neurovfm_tokens", "neurovfm_tokens_tiny", "brain3d_vit", "brain3d_vit_tiny")
POOLERS = ("aggregate_then_classify", "classify_then_aggregate", "avgpool")
POOLER_ALIASES = {"abmil": "aggregate_then_classify", "addmil": "classify_then_aggregate"}
LOSSES = ("bce", "ce", "mse", "mae", "rmse")
PRECISIONS = ("bf16-mixed", "16-mixed", "32")
PRECISION_ALIASES = {"bf16": "bf16-mixed", "16": "16-mixed", "32-true": "32", 32: "32", 16: "16-mixed"}

_INT, _POS, _BOOL, _STR = integer(0), integer(1), boolean, string
_OPT_STR = optional(string)
_PROB = number(0.0, 1.0)

def _studies(v, k):
    """A list of study names, or (our extension) a text file with one study per line."""
    if isinstance(v, str):
        try:
            with open(v, encoding="utf-8") as fh:
                v = [line.strip() for line in fh if line.strip() and not line.startswith("#")]
        except OSError as exc:
            raise ConfigError(f"{k}: cannot read the study list file {v!r} ({exc.strerror})") from None
    return seq(string, min_len=1)(v, k)


def _mode_mapping(v, k):
    """study -> mri|ct, or (our extension) a CSV file ``study_id,mode``."""
    if isinstance(v, str):
        import csv

        try:
            with open(v, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        except OSError as exc:
            raise ConfigError(f"{k}: cannot read the mode-mapping file {v!r} ({exc.strerror})") from None
        if not rows or not {"study_id", "mode"} <= set(rows[0]):
            raise ConfigError(f"{k}: {v} needs the columns study_id,mode")
        v = {r["study_id"]: r["mode"] for r in rows}
    if not isinstance(v, dict) or not v:
        raise ConfigError(f"{k}: expected a mapping study -> mri|ct (or a CSV path), got {v!r}")
    mode = choice("mri", "ct")
    return {str(s): mode(m, f"{k}.{s}") for s, m in v.items()}


_SPLIT = {"studies": Field(_studies),
          "params": {"random_crop": Field(_BOOL, False), "max_crop_size": Field(optional(seq(_POS, 3)), None),
                     "augment": Field(_BOOL, False), "tokenize": Field(_BOOL, True),
                     "ct_window_probs": Field(seq(_PROB, 3), [0.7, 0.15, 0.15])}}
_LOADER = {"batch_size": Field(_POS, 1), "num_workers": Field(_INT, 0), "shuffle": Field(_BOOL, None),
           "drop_last": Field(_BOOL, False), "use_study_sampler": Field(_BOOL, False),
           "collate_fn": {"remove_background": Field(_BOOL, True),
                          "patch_drop_rate": Field(number(0.0, 1.0, hi_open=True), 0.0),
                          "apply_masks_internally": Field(_BOOL, False)}}

SCHEMA_TOP = {
    "infra": {"exp_root": Field(string), "seed": Field(_INT, 0), "num_gpus": Field(_INT, 0),
              "num_nodes": Field(_POS, 1), "log_gpu": Field(_BOOL, False), "log_every_n_steps": Field(_POS, 50),
              "wandb_project": Field(_OPT_STR, None), "comment": Field(optional(anything), None)},
    "data": {"raw_data_dir": Field(_OPT_STR, None), "data_dir": Field(_OPT_STR, None),
             "cache_dir": Field(_OPT_STR, None), "mode_mapping": Field(_mode_mapping),
             "study_labels": Field(_OPT_STR, None), "preprocess": Field(mapping, {}), "augment": Field(mapping, {}),
             "dataset": {"train": _SPLIT, "val": _SPLIT},
             "loader": {"train": _LOADER, "val": _LOADER}},
    "system": Field(mapping),
    "training": {
        "trainer_params": {"max_epochs": Field(_POS), "gradient_clip_val": Field(optional(number(0.0)), None),
                           "accumulate_grad_batches": Field(_POS, 1),
                           "precision": Field(choice(*PRECISIONS, aliases=PRECISION_ALIASES), "32")},
        "monitor_metric": Field(_STR, "val/loss_epoch"), "monitor_mode": Field(choice("min", "max"), "min"),
        "checkpoint_every_n_epochs": Field(_POS, 1),
        "load_backbone": Field(optional(mapping), None),
        "resume_checkpoint": Field(_OPT_STR, None)},
}

_BACKBONE = {"which": Field(string), "params": Field(mapping, {})}
_VIT_PARAMS = {
    "token_dim": Field(_POS, None),
    "embed_layer_cf": {"which": Field(choice("voxel"), "voxel"),
                       "params": {"patch_hw_size": Field(_POS, 16), "patch_d_size": Field(_POS, 4),
                                  "in_chans": Field(_POS, 1), "embed_dim": Field(_POS, None)}},
    "pos_emb_cf": {"which": Field(choice("pe3d"), "pe3d"),
                   "params": {"d": Field(_POS, 30), "d_size": Field(_POS, None), "hw_size": Field(_POS, None),
                              "concat": Field(_BOOL, True)}},
    "embed_dim": Field(_POS, None), "depth": Field(_POS, None), "num_heads": Field(_POS, None),
    "mlp_ratio": Field(number(0.0), 4.0)}
_OPT = {"which": Field(choice("sgd", "adam", "adamw"), "adamw"), "params": Field(mapping, {})}
_SCHD = {"which": Field(optional(choice("cosine", "cos_linear_warmup", "cos_warm_restart", "step_lr")), None),
         "params": Field(mapping, {})}
_NORM = Field(optional(seq(seq(number(), 4), 2)), None)
_MIM = {"out_dim": Field(_POS, None), "hidden_dim": Field(_POS, None), "bottleneck_dim": Field(_POS, None),
        "nlayers": Field(_POS, None), "use_bn": Field(_BOOL, False)}

SCHEMA_PRETRAIN = {
    "vision_backbone_cf": _BACKBONE,
    "predictor_cf": {"dim": Field(_POS, 384), "depth": Field(_POS, 6), "dim_head": Field(_POS, None),
                     "num_heads": Field(_POS, 6), "prefix_len": Field(_INT, 0),
                     "mask_cf": {"num_blocks": Field(_POS, 4), "block_scale": Field(seq(_PROB, 2), [0.1, 0.2]),
                                 "max_tries": Field(_POS, 20)}},
    "proj_params": {"mim": _MIM},
    "ema_beta": Field(seq(_PROB, 2), [0.996, 1.0]),
    "loss_cf": {"which": Field(choice("jepa"), "jepa"), "params": {"lambda": Field(number(0.0), 1.0)}},
    "opt_cf": _OPT, "schd_cf": _SCHD, "normalization_stats_list": _NORM, "enable_aug": Field(_BOOL, False),
}
SCHEMA_CLASSIFY = {
    "model_hyperparams": {
        "vision_backbone_cf": _BACKBONE,
        "pooler_cf": {"which": Field(choice(*POOLERS, aliases=POOLER_ALIASES), "aggregate_then_classify"),
                      "params": {"hidden_dim": Field(_POS, 128), "W_out": Field(_POS, 1),
                                 "use_gating": Field(_BOOL, True), "use_norm": Field(_BOOL, False)}},
        "proj_params": {"out_dim": Field(_POS), "hidden_dims": Field(seq(_POS), [])},
        "predictor_cf": Field(lambda v, k: _null_only(v, k), None),
        "freeze_backbone": Field(_BOOL, True)},
    "loss_cf": {"which": Field(choice(*LOSSES), "bce"), "params": Field(lambda v, k: _no_params(v, k), {})},
    "opt_cf": _OPT, "schd_cf": _SCHD, "normalization_stats_list": _NORM, "enable_aug": Field(_BOOL, False),
}


def _null_only(v, k):
    if v:
        raise ConfigError(f"{k}: an intermediate predictor is not supported in classification; leave it null")
    return None


def _no_params(v, k):
    if v:
        raise ConfigError(f"{k}: the classification losses take no parameters, got {v!r}")
    return {}


def load_config(path: str) -> dict:
    """Read and check ``path``; returns the normalised config (``cfg["system"]["params"]`` per system)."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError("config file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"{'line ' + str(mark.line + 1) + ': ' if mark else ''}not valid YAML "
                          f"({getattr(exc, 'problem', exc)})") from None
    return check_config(raw)


def check_config(raw) -> dict:
    cfg = validate(raw, SCHEMA_TOP)
    sysd = validate(cfg["system"], {"which": Field(choice(PRETRAIN, CLASSIFY)), "params": Field(mapping, {})},
                    "system")
    schema = SCHEMA_PRETRAIN if sysd["which"] == PRETRAIN else SCHEMA_CLASSIFY
    sysd["params"] = validate(sysd["params"], schema, "system.params")
    cfg["system"] = sysd
    data = cfg["data"]
    if not (data["raw_data_dir"] or data["data_dir"]):
        raise ConfigError("data.raw_data_dir: required (or data.data_dir)")
    if data["raw_data_dir"] and data["data_dir"] and data["raw_data_dir"] != data["data_dir"]:
        raise ConfigError("data.data_dir: differs from data.raw_data_dir; give one folder of study folders")
    for split in ("train", "val"):
        p = data["dataset"][split]["params"]
        if not p["tokenize"]:
            raise ConfigError(f"data.dataset.{split}.params.tokenize: false is not supported (the encoders "
                              f"tokenise the volume themselves)")
        if abs(sum(p["ct_window_probs"]) - 1.0) > 1e-6:
            raise ConfigError(f"data.dataset.{split}.params.ct_window_probs: must sum to 1, got {p['ct_window_probs']}")
        if split == "val" and data["loader"][split]["collate_fn"]["patch_drop_rate"] > 0:
            raise ConfigError("data.loader.val.collate_fn.patch_drop_rate: validation drops no tokens; set 0.0")
        if not data["loader"][split]["collate_fn"]["remove_background"]:
            raise ConfigError(f"data.loader.{split}.collate_fn.remove_background: only true is supported "
                              f"(as in NeuroVFM's collator)")
    if sysd["which"] == CLASSIFY and not data["study_labels"]:
        raise ConfigError("data.study_labels: required for VisionClassificationSystem (CSV: study_id + one column "
                          "per label)")
    lb = cfg["training"]["load_backbone"]
    if lb is not None:
        cfg["training"]["load_backbone"] = validate(lb, {"ckpt_path": Field(string),
                                                         "remove_prefix": Field(optional(anything), "")},
                                                    "training.load_backbone")
    if sysd["which"] == PRETRAIN:
        beta = sysd["params"]["ema_beta"]
        if beta[0] > beta[1]:
            raise ConfigError(f"system.params.ema_beta: start {beta[0]} above end {beta[1]}")
        lo, hi = sysd["params"]["predictor_cf"]["mask_cf"]["block_scale"]
        if not 0 < lo <= hi < 1:
            raise ConfigError(f"system.params.predictor_cf.mask_cf.block_scale: need 0 < lo <= hi < 1, got {[lo, hi]}")
    return cfg


def backbone_cf(cfg: dict) -> dict:
    p = cfg["system"]["params"]
    return p["vision_backbone_cf"] if cfg["system"]["which"] == PRETRAIN else p["model_hyperparams"]["vision_backbone_cf"]


def backbone_key(cfg: dict) -> str:
    return ("system.params.vision_backbone_cf" if cfg["system"]["which"] == PRETRAIN
            else "system.params.model_hyperparams.vision_backbone_cf")


def backbone_spec(cf: dict, key: str = "vision_backbone_cf") -> tuple[str, dict]:
    """``vision_backbone_cf`` -> (registered encoder name, constructor overrides)."""
    which = cf["which"]
    if which in NEURO_ENCODERS:
        return which, dict(cf["params"])
    if which not in VIT_SIZES and which != "vit":
        raise ConfigError(f"{key}.which: {which!r} is not one of {sorted(VIT_SIZES) + ['vit'] + list(NEURO_ENCODERS)}")
    p = validate(cf["params"], _VIT_PARAMS, f"{key}.params")
    emb, pe = p["embed_layer_cf"]["params"], p["pos_emb_cf"]["params"]
    if which == "vit":
        missing = [k for k in ("depth", "num_heads") if p[k] is None]
        if missing or (p["embed_dim"] is None and emb["embed_dim"] is None):
            raise ConfigError(f"{key}.params: which 'vit' needs embed_dim, depth and num_heads")
        width, depth, heads = p["embed_dim"] or emb["embed_dim"], p["depth"], p["num_heads"]
    else:
        width, depth, heads = VIT_SIZES[which]
        for name, val, want in (("embed_dim", p["embed_dim"], width), ("depth", p["depth"], depth),
                                ("num_heads", p["num_heads"], heads)):
            if val is not None and val != want:
                raise ConfigError(f"{key}.params.{name}: {val} contradicts {which} ({want}); use which: vit")
    if emb["embed_dim"] is not None and emb["embed_dim"] != width:
        raise ConfigError(f"{key}.params.embed_layer_cf.params.embed_dim: {emb['embed_dim']} differs from the "
                          f"backbone width {width}")
    if width % heads:
        raise ConfigError(f"{key}.params.num_heads: width {width} is not divisible by {heads} heads")
    token = (emb["patch_d_size"], emb["patch_hw_size"], emb["patch_hw_size"])
    token_dim = emb["in_chans"] * math.prod(token)
    if p["token_dim"] is not None and p["token_dim"] != token_dim:
        raise ConfigError(f"{key}.params.token_dim: {p['token_dim']} != in_chans x patch_d x patch_hw^2 = {token_dim}")
    if not pe["concat"]:
        raise ConfigError(f"{key}.params.pos_emb_cf.params.concat: only true (3D code concatenated) is supported")
    if pe["d"] % 6 or pe["d"] >= width:
        raise ConfigError(f"{key}.params.pos_emb_cf.params.d: {pe['d']} must be a multiple of 6 below the width {width}")
    return "neurovfm_tokens", dict(token_size=token, in_channels=emb["in_chans"], hidden_size=width, depth=depth,
                                   num_heads=heads, pe_dim=pe["d"], mlp_ratio=p["mlp_ratio"])

