"""Gated attention-MIL pooling of the series of a study (Ilse et al. 2018; NeuroVFM's aggregate-then-classify).

A study item ``[S, C, D, H, W]`` (T1 + T2 + FLAIR, or one CT in three windows) is encoded series by series;
this module turns the S token sets into one study representation:

* ``mode="grid"``: series share a token grid (brain3d_vit on a fixed volume shape). At every grid position the
  S tokens are weighted by a gated-attention softmax over series and summed: ``[S, T, D] -> [T, D]``, so the
  study keeps the spatial layout the projectors (e.g. ``spatial_pool_mlp``) expect.
* ``mode="bag"``: all tokens of all series form one bag (ragged counts allowed, e.g. neurovfm_tokens after
  background removal); ``heads`` gated-attention branches each pool the bag to one vector: ``-> [heads, D]``.
  ``heads=1`` is NeuroVFM's AB-MIL study embedding.

``gated=False`` drops the sigmoid gate (plain tanh attention, Ilse et al.'s non-gated variant); the training
poolers (``patches.neuro.train.poolers``) reuse this module for ``use_gating``.
"""
from __future__ import annotations

import torch
from torch import nn


class GatedAttentionMIL(nn.Module):
    def __init__(self, dim: int, hidden: int = 128, heads: int = 1, mode: str = "grid", gated: bool = True):
        super().__init__()
        if mode not in ("grid", "bag"):
            raise ValueError(f"MIL mode must be 'grid' or 'bag', got {mode!r}")
        if mode == "grid" and heads != 1:
            raise ValueError("grid-mode MIL pools per position with one attention branch (mil_heads=1)")
        self.mode, self.heads = mode, heads
        self.attn_v = nn.Linear(dim, hidden)
        self.attn_u = nn.Linear(dim, hidden) if gated else None
        self.attn_w = nn.Linear(hidden, heads)

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        a = torch.tanh(self.attn_v(h))
        return self.attn_w(a * torch.sigmoid(self.attn_u(h)) if self.attn_u is not None else a)

    def forward(self, series_tokens):
        """``grid``: ``[N, S, T, D] -> [N, T, D]``. ``bag``: one study as ``list[Tensor [T_s, D]]`` -> ``[heads, D]``."""
        if self.mode == "grid":
            a = torch.softmax(self.scores(series_tokens), dim=1)  # [N, S, T, 1]: softmax over series
            return (a * series_tokens).sum(dim=1)
        bag = torch.cat(list(series_tokens), dim=0) if isinstance(series_tokens, (list, tuple)) else series_tokens
        a = torch.softmax(self.scores(bag), dim=0)  # [M, heads]
        return a.transpose(0, 1) @ bag
