"""Classification parts: the three poolers on ragged study bags, the losses, per-label metrics, and the LR
schedules (NeuroVFM's names; unknown schedule parameters refused)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from patches.neuro.train.classify import StudyPooler, loss_fn, metrics
from patches.neuro.train.optim import build_optimizer, build_scheduler
from patches.neuro.train.schema import ConfigError

P = {"hidden_dim": 8, "W_out": 2, "use_gating": True, "use_norm": True}


@pytest.mark.parametrize("which,params", [("aggregate_then_classify", P), ("aggregate_then_classify",
                                                                            dict(P, use_gating=False)),
                                          ("classify_then_aggregate", dict(P, W_out=1)), ("avgpool", P)])
def test_poolers_give_study_logits(which, params):
    torch.manual_seed(0)
    pool = StudyPooler(which, 16, params, [12], 3)
    for n in (1, 7, 40):
        out = pool(torch.randn(n, 16))
        assert out.shape == (3,) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in pool.parameters() if p.requires_grad and p.dim() > 1)


def test_classify_then_aggregate_is_one_branch():
    with pytest.raises(ConfigError, match="pooler_cf.params.W_out"):
        StudyPooler("classify_then_aggregate", 16, P, [], 1)


def test_losses_and_metrics():
    logits = torch.tensor([[2.0, -1.0], [-2.0, 1.0], [1.0, 1.0], [-1.0, -2.0]])
    bce_y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    assert float(loss_fn("bce", logits, bce_y)) < 0.4
    m = metrics("bce", logits.numpy(), bce_y.numpy(), ["a", "b"])
    assert m["val/auc/a"] == 1.0 and m["val/auc_epoch"] == 1.0 and m["val/bacc_epoch"] == 1.0
    ce_y = torch.tensor([[0.0], [1.0], [1.0], [0.0]])
    m = metrics("ce", logits.numpy(), ce_y.numpy(), ["cls"])
    assert set(m) == {"val/auc_epoch", "val/bacc_epoch", "val/f1_epoch"} and m["val/bacc_epoch"] == 0.75
    reg_y = logits + 0.5
    for which in ("mse", "mae", "rmse"):
        assert float(loss_fn(which, logits, reg_y)) == pytest.approx(0.25 if which == "mse" else 0.5)
    m = metrics("mae", logits.numpy(), reg_y.numpy(), ["x", "y"])
    assert m["val/mae_epoch"] == pytest.approx(0.5) and m["val/pearson_epoch"] == pytest.approx(1.0)
    assert np.isnan(metrics("bce", logits.numpy(), np.zeros((4, 2)), ["a", "b"])["val/auc/a"])  # one class only


@pytest.mark.parametrize("schd", [{"which": None, "params": {}},
                                  {"which": "cosine", "params": {"warmup_epochs": 1, "min_lr": "1e-6"}},
                                  {"which": "cos_linear_warmup", "params": {"num_warmup_steps": 0.2, "num_cycles": 0.5}},
                                  {"which": "cos_warm_restart", "params": {"T_0": 3}},
                                  {"which": "step_lr", "params": {"step_size": 2, "gamma": 0.5}}])
def test_schedules(schd):
    w = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([w], {"which": "adamw", "params": {"lr": "1e-3", "betas": [0.9, 0.95]}})
    sched = build_scheduler(opt, schd, steps_per_epoch=5, epochs=2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert all(0 <= lr <= 1e-3 + 1e-12 for lr in lrs)
    if schd["which"] == "cosine":
        assert lrs[0] == pytest.approx(1e-6) and max(lrs) == pytest.approx(1e-3) and lrs[-1] < 2e-4


def test_bad_optimizer_and_schedule_params_name_the_key():
    w = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError, match="system.params.opt_cf.params: .*momentumm"):
        build_optimizer([w], {"which": "sgd", "params": {"lr": 0.1, "momentumm": 0.9}})
    opt = build_optimizer([w], {"which": "sgd", "params": {"lr": 0.1}})
    with pytest.raises(ConfigError, match="system.params.schd_cf.params.warmup: unknown"):
        build_scheduler(opt, {"which": "cosine", "params": {"warmup": 1}}, steps_per_epoch=1, epochs=1)
