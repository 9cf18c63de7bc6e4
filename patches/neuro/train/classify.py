"""Study classification (NeuroVFM's ``VisionClassificationSystem``): backbone -> MIL pooler -> head -> loss + metrics.

A study is a bag: the foreground tokens of all its series (a CT series gives one series per window) after the
backbone (frozen by default, ``model_hyperparams.freeze_backbone``). Poolers (``pooler_cf.which``):

* ``aggregate_then_classify`` (alias ``abmil``): gated attention-MIL (``patches.neuro.mil``, ``W_out`` attention
  branches, ``use_gating``) pools the bag to ``W_out`` vectors, concatenated, then the MLP head;
* ``classify_then_aggregate`` (alias ``addmil``): the head scores every token, attention-MIL weights average the
  token logits (additive MIL; one attention branch);
* ``avgpool``: the mean token, then the head.
``use_norm`` puts a LayerNorm on the tokens first. The head is an MLP ``hidden_dims`` -> ``proj_params.out_dim``.

Losses ``bce`` (multi-label), ``ce`` (multi-class), ``mse``/``mae``/``rmse`` (regression). ``metrics`` computes, per
label, AUROC, balanced accuracy and F1 (bce: threshold 0.5 on the sigmoid; ce: one-vs-rest AUROC, balanced
accuracy and macro-F1 of the argmax), or MAE and Pearson r (regression), and their means as ``val/auc_epoch``,
``val/bacc_epoch``, ``val/f1_epoch`` (``val/mae_epoch``, ``val/pearson_epoch``) next to ``val/loss_epoch``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score
from torch import nn

from internvl.model.vision.base import create_vision_model
from patches.neuro.mil import GatedAttentionMIL
from patches.neuro.train.jepa import drop_tokens
from patches.neuro.train.schema import ConfigError


def mlp(dim_in: int, hidden: list[int], dim_out: int) -> nn.Sequential:
    layers, d = [], dim_in
    for h in hidden:
        layers += [nn.Linear(d, h), nn.GELU()]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, dim_out))


class StudyPooler(nn.Module):
    def __init__(self, which: str, dim: int, params: dict, hidden_dims: list[int], out_dim: int):
        super().__init__()
        self.which = which
        self.norm = nn.LayerNorm(dim) if params["use_norm"] else nn.Identity()
        heads = params["W_out"]
        if which == "classify_then_aggregate" and heads != 1:
            raise ConfigError("system.params.model_hyperparams.pooler_cf.params.W_out: classify_then_aggregate "
                             "weights token logits with one attention branch (W_out: 1)")
        self.attn = (GatedAttentionMIL(dim, params["hidden_dim"], heads, "bag", gated=params["use_gating"])
                     if which != "avgpool" else None)
        head_in = dim * heads if which == "aggregate_then_classify" else dim
        self.head = mlp(head_in, hidden_dims, out_dim)

    def forward(self, bag: torch.Tensor) -> torch.Tensor:
        """``[M, D]`` tokens of one study -> ``[out_dim]`` logits."""
        h = self.norm(bag)
        if self.which == "avgpool":
            return self.head(h.mean(0))
        if self.which == "aggregate_then_classify":
            return self.head(self.attn(h).reshape(-1))
        a = torch.softmax(self.attn.scores(h), dim=0)  # [M, 1]
        return (a * self.head(h)).sum(0)


def loss_fn(which: str, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if which == "bce":
        return F.binary_cross_entropy_with_logits(logits, labels)
    if which == "ce":
        return F.cross_entropy(logits, labels[:, 0].long())
    if which == "mse":
        return F.mse_loss(logits, labels)
    if which == "mae":
        return F.l1_loss(logits, labels)
    return torch.sqrt(F.mse_loss(logits, labels) + 1e-12)


def metrics(which: str, logits: np.ndarray, labels: np.ndarray, names: list[str]) -> dict:
    """Per-label and mean metrics (see the module docstring); AUROC is NaN when a label has one class only."""
    out: dict[str, float] = {}
    if which in ("mse", "mae", "rmse"):
        for i, n in enumerate(names):
            out[f"val/mae/{n}"] = float(np.abs(logits[:, i] - labels[:, i]).mean())
            ok = np.std(logits[:, i]) > 0 and np.std(labels[:, i]) > 0
            out[f"val/pearson/{n}"] = float(pearsonr(logits[:, i], labels[:, i])[0]) if ok else float("nan")
        out["val/mae_epoch"] = float(np.mean([out[f"val/mae/{n}"] for n in names]))
        out["val/pearson_epoch"] = float(np.nanmean([out[f"val/pearson/{n}"] for n in names]))
        return out
    if which == "ce":
        y = labels[:, 0].astype(int)
        prob = torch.softmax(torch.from_numpy(logits), -1).numpy()
        pred = prob.argmax(1)
        try:
            auc = (roc_auc_score(y, prob, multi_class="ovr", labels=list(range(prob.shape[1])))
                   if prob.shape[1] > 2 else roc_auc_score(y, prob[:, 1]))
        except ValueError:
            auc = float("nan")
        out.update({"val/auc_epoch": float(auc), "val/bacc_epoch": float(balanced_accuracy_score(y, pred)),
                    "val/f1_epoch": float(f1_score(y, pred, average="macro"))})
        return out
    prob = 1 / (1 + np.exp(-logits))
    for i, n in enumerate(names):
        y, p = labels[:, i].astype(int), prob[:, i]
        out[f"val/auc/{n}"] = float(roc_auc_score(y, p)) if len(set(y)) == 2 else float("nan")
        out[f"val/bacc/{n}"] = float(balanced_accuracy_score(y, p > 0.5))
        out[f"val/f1/{n}"] = float(f1_score(y, p > 0.5, average="macro"))
    for m in ("auc", "bacc", "f1"):
        out[f"val/{m}_epoch"] = float(np.nanmean([out[f"val/{m}/{n}"] for n in names]))
    return out


class ClassificationSystem(nn.Module):
    CLASS_METRICS = ("val/auc_epoch", "val/bacc_epoch", "val/f1_epoch")
    REGRESSION_METRICS = ("val/mae_epoch", "val/pearson_epoch")

    @property
    def monitor_metrics(self) -> tuple:
        extra = self.REGRESSION_METRICS if self.loss_which in ("mse", "mae", "rmse") else self.CLASS_METRICS
        return ("val/loss_epoch", "train/loss_epoch") + extra

    def __init__(self, encoder_name: str, overrides: dict, params: dict, label_names: list[str], *, seed: int,
                 patch_drop_rate: float):
        super().__init__()
        mh = params["model_hyperparams"]
        self.backbone = create_vision_model(encoder_name, **overrides)
        self.freeze = mh["freeze_backbone"]
        if self.freeze:
            self.backbone.requires_grad_(False)
        dim = self.backbone.config.hidden_size
        pc = mh["pooler_cf"]
        self.pooler = StudyPooler(pc["which"], dim, pc["params"], mh["proj_params"]["hidden_dims"],
                                  mh["proj_params"]["out_dim"])
        self.loss_which, self.label_names = params["loss_cf"]["which"], label_names
        self.seed, self.patch_drop_rate = seed, patch_drop_rate

    def backbones(self) -> list[nn.Module]:
        return [self.backbone]

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.backbone.eval()
        return self

    def study_logits(self, batch: list[dict], rng: np.random.Generator | None) -> torch.Tensor:
        dev = next(self.pooler.parameters()).device
        toks, owner = [], []
        for u, unit in enumerate(batch):
            for it in unit["items"]:
                emb, _, fg, _ = self.backbone.grid_tokens(it.to(dev))
                keep = drop_tokens(fg, self.patch_drop_rate, rng) if rng is not None else fg
                toks.append(emb[keep])
                owner.append(u)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            feats = self.backbone.transform(toks)
        return torch.stack([self.pooler(torch.cat([f for f, o in zip(feats, owner) if o == u]))
                            for u in range(len(batch))])

    def training_step(self, batch: list[dict], step: int) -> tuple[torch.Tensor, dict]:
        logits = self.study_logits(batch, np.random.default_rng([self.seed, step, 13]))
        labels = torch.stack([u["label"] for u in batch]).to(logits.device)
        loss = loss_fn(self.loss_which, logits.float(), labels)
        return loss, {"train/loss": float(loss.detach())}

    def after_optimizer_step(self, step: int, total_steps: int) -> dict:
        return {}

    def validation_start(self) -> None:
        self._logits, self._labels = [], []

    @torch.no_grad()
    def validation_step(self, batch: list[dict], index: int) -> None:
        self._logits.append(self.study_logits(batch, None).float().cpu())
        self._labels.append(torch.stack([u["label"] for u in batch]))

    def validation_end(self) -> dict:
        if not self._logits:
            return {}
        logits, labels = torch.cat(self._logits), torch.cat(self._labels)
        out = {"val/loss_epoch": float(loss_fn(self.loss_which, logits, labels))}
        out.update(metrics(self.loss_which, logits.numpy(), labels.numpy(), self.label_names))
        return out
