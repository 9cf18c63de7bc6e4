"""Optimisers (``opt_cf``: sgd / adam / adamw + their torch keyword arguments) and per-step LR schedules (``schd_cf``).

Schedules (stepped once per optimiser step; ``total`` = ``ipe_scale`` x epochs x optimiser steps per epoch):

* ``cosine`` (NeuroVFM / I-JEPA): linear warm-up from ``min_lr`` to ``lr`` over ``warmup_epochs``, then cosine to
  ``min_lr``; params ``warmup_epochs``, ``min_lr``, ``ipe_scale``.
* ``cos_linear_warmup``: transformers' ``get_cosine_schedule_with_warmup``; ``num_warmup_steps`` (< 1: a fraction of
  the total), ``num_cycles``, ``ipe_scale``.
* ``cos_warm_restart``: torch ``CosineAnnealingWarmRestarts``; ``T_0`` (steps), ``T_mult``, ``eta_min``.
* ``step_lr``: torch ``StepLR``; ``step_size`` (steps), ``gamma``.
Unknown parameters are errors naming ``system.params.schd_cf.params.<key>``.
"""
from __future__ import annotations

import math

import torch
from transformers import get_cosine_schedule_with_warmup

from patches.neuro.train.schema import ConfigError, Field, integer, number, validate

_SCHD_PARAMS = {
    "cosine": {"warmup_epochs": Field(number(0.0), 0.0), "min_lr": Field(number(0.0), 0.0),
               "ipe_scale": Field(number(0.0), 1.0)},
    "cos_linear_warmup": {"num_warmup_steps": Field(number(0.0), 0.0), "num_cycles": Field(number(0.0), 0.5),
                          "ipe_scale": Field(number(0.0), 1.0)},
    "cos_warm_restart": {"T_0": Field(integer(1)), "T_mult": Field(integer(1), 1), "eta_min": Field(number(0.0), 0.0)},
    "step_lr": {"step_size": Field(integer(1)), "gamma": Field(number(0.0), 0.1)},
}
_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def build_optimizer(params, opt_cf: dict) -> torch.optim.Optimizer:
    kwargs = dict(opt_cf["params"])
    for k in ("lr", "weight_decay", "momentum", "eps"):
        if isinstance(kwargs.get(k), str):  # YAML 1.1 reads "1e-4" as a string
            try:
                kwargs[k] = float(kwargs[k])
            except ValueError:
                raise ConfigError(f"system.params.opt_cf.params.{k}: expected a number, got {kwargs[k]!r}") from None
    if "betas" in kwargs:
        kwargs["betas"] = tuple(float(b) for b in kwargs["betas"])
    if opt_cf["which"] == "sgd" and "lr" not in kwargs:
        raise ConfigError("system.params.opt_cf.params.lr: required for sgd")
    try:
        return _OPTIMIZERS[opt_cf["which"]](params, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"system.params.opt_cf.params: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"system.params.opt_cf.params: {exc}") from None


def build_scheduler(optimizer, schd_cf: dict, *, steps_per_epoch: int, epochs: int):
    which = schd_cf["which"]
    if which is None:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    p = validate(schd_cf["params"], _SCHD_PARAMS[which], "system.params.schd_cf.params")
    if which == "cos_warm_restart":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=p["T_0"], T_mult=p["T_mult"],
                                                                    eta_min=p["eta_min"])
    if which == "step_lr":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=p["step_size"], gamma=p["gamma"])
    total = max(1, int(p["ipe_scale"] * epochs * steps_per_epoch))
    if which == "cos_linear_warmup":
        w = p["num_warmup_steps"]
        warm = int(w * total) if w < 1 else int(w)
        return get_cosine_schedule_with_warmup(optimizer, warm, total, num_cycles=p["num_cycles"])
    base = optimizer.param_groups[0]["lr"]
    warm, floor = int(p["warmup_epochs"] * steps_per_epoch), p["min_lr"]

    def factor(step: int) -> float:
        if step < warm:
            return (floor + (base - floor) * step / warm) / base
        t = min(1.0, (step - warm) / max(1, total - warm))
        return (floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * t))) / base

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
