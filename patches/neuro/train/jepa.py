"""Volumetric JEPA (NeuroVFM's ``VisionPretrainingSystem``): predict EMA-target features of masked 3D token blocks.

Per item ``[C + 1, D, H, W]`` (last channel: foreground mask):

1. the student (context) encoder and the EMA teacher (target) encoder embed every grid token
   (``encoder.grid_tokens``); background tokens are removed;
2. ``sample_masks`` draws ``mask_cf.num_blocks`` 3D blocks (each ``block_scale`` of the token grid's volume, cube
   root per axis); their foreground tokens are the targets, the remaining foreground is the context, of which
   ``patch_drop_rate`` is dropped;
3. the student transforms the context only; the teacher (no gradient) transforms all foreground tokens, its
   outputs are layer-normed and the targets taken;
4. the ``Predictor`` (width ``predictor_cf.dim``) reads the context features plus one mask token per target, both
   with fixed 3D sin-cos positions, and regresses the target features (smooth-L1, times ``loss_cf.params.lambda``);
5. after each optimiser step the teacher follows the student: ``t <- m t + (1 - m) s`` with momentum
   ``m = ema_beta[0] + (ema_beta[1] - ema_beta[0]) * step / total_steps`` (``ema_momentum``).

The student/teacher are the registered encoders the VLM uses (``neurovfm_tokens*`` / ``brain3d_vit*``), saved under
``student_encoder.`` / ``teacher_encoder.``: ``remove_prefix`` loads either into the VLM or a classifier as is.
Every random draw is seeded by ``(seed, global step, item)``: a resumed run draws the same masks.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from internvl.model.vision.base import create_vision_model
from patches.neuro.encoders.common import sincos_embedding
from patches.neuro.encoders.neurovfm_tokens import VarlenBlock
from patches.neuro.train.data import DataError
from patches.neuro.train.schema import ConfigError


def ema_momentum(beta: list[float], step: int, total_steps: int) -> float:
    return beta[0] + (beta[1] - beta[0]) * min(1.0, step / max(1, total_steps))


def sample_masks(grid, fg: torch.Tensor, rng: np.random.Generator, mask_cf: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, context) bool masks over the flat token grid, both inside ``fg`` and disjoint, both non-empty."""
    gd, gh, gw = grid
    n_fg = int(fg.sum())
    if n_fg < 2:
        raise DataError(f"a volume has {n_fg} foreground token(s); JEPA needs at least 2 (lower the token size or "
                        f"max_crop_size)")
    lo, hi = mask_cf["block_scale"]
    for _ in range(mask_cf["max_tries"]):
        block = np.zeros((gd, gh, gw), dtype=bool)
        for _ in range(mask_cf["num_blocks"]):
            side = rng.uniform(lo, hi) ** (1 / 3)
            ext = [max(1, min(g, int(round(g * side * rng.uniform(0.8, 1.25))))) for g in (gd, gh, gw)]
            st = [int(rng.integers(0, g - e + 1)) for g, e in zip((gd, gh, gw), ext)]
            block[st[0]:st[0] + ext[0], st[1]:st[1] + ext[1], st[2]:st[2] + ext[2]] = True
        target = torch.from_numpy(block.reshape(-1)).to(fg.device) & fg
        context = fg & ~target
        if target.any() and context.any():
            return target, context
    idx = fg.nonzero(as_tuple=True)[0]  # blocks kept missing the foreground: a random quarter as targets
    perm = idx[torch.from_numpy(rng.permutation(len(idx))).to(idx.device)]
    target = torch.zeros_like(fg)
    target[perm[:max(1, len(idx) // 4)]] = True
    return target, fg & ~target


def drop_tokens(keep: torch.Tensor, rate: float, rng: np.random.Generator) -> torch.Tensor:
    """Drop ``rate`` of the True entries of ``keep`` (at least one stays)."""
    if rate <= 0:
        return keep
    idx = keep.nonzero(as_tuple=True)[0]
    n_drop = min(len(idx) - 1, int(round(rate * len(idx))))
    out = keep.clone()
    out[idx[torch.from_numpy(rng.permutation(len(idx))[:n_drop]).to(idx.device)]] = False
    return out


class Predictor(nn.Module):
    def __init__(self, hidden: int, dim: int, depth: int, num_heads: int, prefix_len: int = 0, mlp_ratio: float = 4.0):
        super().__init__()
        self.dim = dim
        self.embed = nn.Linear(hidden, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.prefix = nn.Parameter(torch.zeros(prefix_len, dim)) if prefix_len else None
        self.blocks = nn.ModuleList(VarlenBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, hidden)
        trunc_normal_(self.mask_token, std=0.02)
        if self.prefix is not None:
            trunc_normal_(self.prefix, std=0.02)

    def forward(self, ctx: list[torch.Tensor], ctx_coords: list[torch.Tensor], tgt_coords: list[torch.Tensor]):
        seqs, n_tgt = [], []
        for c, cc, tc in zip(ctx, ctx_coords, tgt_coords):
            parts = [] if self.prefix is None else [self.prefix.to(c.dtype)]
            parts.append(self.embed(c) + sincos_embedding(cc, self.dim).to(c.dtype))
            parts.append(self.mask_token.to(c.dtype) + sincos_embedding(tc, self.dim).to(c.dtype))
            seqs.append(torch.cat(parts, 0))
            n_tgt.append(tc.shape[0])
        lens = [s.shape[0] for s in seqs]
        cu = [0] + np.cumsum(lens).tolist()
        x = torch.cat(seqs, 0)
        for blk in self.blocks:
            x = blk(x, cu)
        x = self.out(self.norm(x))
        return [x[b - m:b] for b, m in zip(cu[1:], n_tgt)]


class PretrainingSystem(nn.Module):
    monitor_metrics = ("val/loss_epoch", "train/loss_epoch")

    def __init__(self, encoder_name: str, overrides: dict, params: dict, *, seed: int, patch_drop_rate: float):
        super().__init__()
        self.student_encoder = create_vision_model(encoder_name, **overrides)
        self.teacher_encoder = copy.deepcopy(self.student_encoder)
        self.teacher_encoder.requires_grad_(False)
        pcf = params["predictor_cf"]
        if pcf["dim"] % pcf["num_heads"]:
            raise ConfigError(f"system.params.predictor_cf.num_heads: dim {pcf['dim']} is not divisible by "
                              f"{pcf['num_heads']} heads")
        if pcf["dim_head"] is not None and pcf["dim_head"] * pcf["num_heads"] != pcf["dim"]:
            raise ConfigError(f"system.params.predictor_cf.dim_head: {pcf['dim_head']} x num_heads "
                              f"{pcf['num_heads']} != dim {pcf['dim']}")
        hidden = self.student_encoder.config.hidden_size
        self.predictor = Predictor(hidden, pcf["dim"], pcf["depth"], pcf["num_heads"], pcf["prefix_len"])
        self.mask_cf, self.beta, self.lam = pcf["mask_cf"], params["ema_beta"], params["loss_cf"]["params"]["lambda"]
        self.seed, self.patch_drop_rate = seed, patch_drop_rate

    def backbones(self) -> list[nn.Module]:
        return [self.student_encoder, self.teacher_encoder]

    def trainable_parameters(self):
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("teacher_encoder.")]

    def _loss(self, batch: list[dict], rng: np.random.Generator, drop: float) -> torch.Tensor:
        items = [(unit.get("study"), it) for unit in batch for it in unit["items"]]
        dev = next(self.parameters()).device
        ctx_emb, ctx_xyz, tgt_xyz, tgt_sel, t_emb = [], [], [], [], []
        for study, it in items:
            it = it.to(dev)
            emb, coords, fg, grid = self.student_encoder.grid_tokens(it)
            try:
                target, context = sample_masks(grid, fg, rng, self.mask_cf)
            except DataError as exc:
                raise DataError(f"study {study}: {exc}") from None
            context = drop_tokens(context, drop, rng)
            ctx_emb.append(emb[context])
            ctx_xyz.append(coords[context])
            tgt_xyz.append(coords[target])
            with torch.no_grad():
                temb, _, _, _ = self.teacher_encoder.grid_tokens(it)
            t_emb.append(temb[fg])
            tgt_sel.append(target[fg])  # targets among the foreground tokens the teacher sees
        ctx = self.student_encoder.transform(ctx_emb)
        with torch.no_grad():
            tfeat = self.teacher_encoder.transform(t_emb)
            targets = torch.cat([F.layer_norm(t.float(), t.shape[-1:])[s] for t, s in zip(tfeat, tgt_sel)])
        pred = torch.cat(self.predictor(ctx, ctx_xyz, tgt_xyz))
        return self.lam * F.smooth_l1_loss(pred.float(), targets)

    def training_step(self, batch: list[dict], step: int) -> tuple[torch.Tensor, dict]:
        loss = self._loss(batch, np.random.default_rng([self.seed, step, 11]), self.patch_drop_rate)
        return loss, {"train/loss": float(loss.detach())}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> dict:
        m = ema_momentum(self.beta, step, total_steps)
        for t, s in zip(self.teacher_encoder.parameters(), self.student_encoder.parameters()):
            t.mul_(m).add_(s.detach().to(t.dtype), alpha=1 - m)
        return {"train/ema_momentum": m}

    def validation_start(self) -> None:
        self._val = []

    @torch.no_grad()
    def validation_step(self, batch: list[dict], index: int) -> None:
        loss = self._loss(batch, np.random.default_rng([self.seed, 10 ** 9, index]), 0.0)
        self._val.append(float(loss))

    def validation_end(self) -> dict:
        return {"val/loss_epoch": float(np.mean(self._val))} if self._val else {}


def feature_spread(features: torch.Tensor) -> torch.Tensor:
    """Per-dimension standard deviation of ``[N, D]`` features across N (collapse -> all near 0)."""
    return features.float().std(dim=0)
