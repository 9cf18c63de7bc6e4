"""JEPA parts: the EMA teacher follows ``ema_beta`` exactly, masks are disjoint foreground blocks, the predictor
and loss run on ragged token sets, and both encoder families (neurovfm_tokens, brain3d_vit) train."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from patches.neuro.train.jepa import PretrainingSystem, drop_tokens, ema_momentum, sample_masks

PARAMS = {"predictor_cf": {"dim": 32, "depth": 1, "dim_head": None, "num_heads": 4, "prefix_len": 2,
                           "mask_cf": {"num_blocks": 4, "block_scale": [0.1, 0.2], "max_tries": 20}},
          "ema_beta": [0.9, 1.0], "loss_cf": {"params": {"lambda": 1.0}}}
TINY = dict(token_size=(2, 8, 8), hidden_size=48, pe_dim=12, depth=2, num_heads=4, mlp_ratio=2.0)


def _item(seed: int, shape=(8, 32, 40)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(shape)
    mask[1:7, 4:28, 6:34] = 1
    return torch.cat([torch.randn(1, *shape, generator=g) * mask, mask[None]])


def test_ema_schedule_values():
    assert ema_momentum([0.996, 1.0], 0, 100) == 0.996
    assert ema_momentum([0.996, 1.0], 50, 100) == pytest.approx(0.998)
    assert ema_momentum([0.996, 1.0], 100, 100) == 1.0 == ema_momentum([0.996, 1.0], 150, 100)


@pytest.mark.parametrize("encoder,overrides", [("neurovfm_tokens", TINY),
                                               ("brain3d_vit_tiny", {"volume_shape": (8, 32, 40),
                                                                     "patch_size": (2, 8, 8)})])
def test_teacher_follows_the_ema_schedule(encoder, overrides):
    torch.manual_seed(0)
    system = PretrainingSystem(encoder, overrides, PARAMS, seed=0, patch_drop_rate=0.1)
    opt = torch.optim.AdamW(system.trainable_parameters(), lr=1e-2)
    assert not any(p.requires_grad for p in system.teacher_encoder.parameters())
    batch = [{"items": [_item(1), _item(2, (6, 24, 40))]}]
    total = 10
    for step in range(1, 4):
        teacher_before = copy.deepcopy(system.teacher_encoder.state_dict())
        loss, logs = system.training_step(batch, step)
        assert torch.isfinite(loss) and logs["train/loss"] > 0
        loss.backward()
        opt.step()
        opt.zero_grad()
        m = system.after_optimizer_step(step, total)["train/ema_momentum"]
        assert m == pytest.approx(0.9 + 0.1 * step / total)
        student = system.student_encoder.state_dict()
        for k, t in system.teacher_encoder.state_dict().items():
            torch.testing.assert_close(t, m * teacher_before[k] + (1 - m) * student[k], rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(system.teacher_encoder.state_dict().values(),
                                                       system.student_encoder.state_dict().values()))


def test_masks_are_disjoint_foreground_blocks():
    grid = (4, 6, 6)
    fg = torch.zeros(144, dtype=torch.bool)
    fg[20:120] = True
    cf = PARAMS["predictor_cf"]["mask_cf"]
    for s in range(10):
        t, c = sample_masks(grid, fg, np.random.default_rng(s), cf)
        assert t.any() and c.any() and not (t & c).any() and not ((t | c) & ~fg).any()
        t2, c2 = sample_masks(grid, fg, np.random.default_rng(s), cf)
        assert torch.equal(t, t2) and torch.equal(c, c2)
    kept = drop_tokens(c, 0.5, np.random.default_rng(0))
    assert 0 < int(kept.sum()) < int(c.sum()) and not (kept & ~c).any()
    assert int(drop_tokens(fg & (torch.arange(144) == 30), 0.9, np.random.default_rng(0)).sum()) == 1  # one stays
