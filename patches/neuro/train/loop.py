"""The training run behind ``python -m patches.neuro.train -c CONFIG.yaml``: device, data, system, loop, logs, checkpoints.

* Device/precision: ``infra.num_gpus`` > 0 with CUDA runs on the GPU under ``precision`` (``bf16-mixed``,
  ``16-mixed`` with a grad scaler, ``32``); without CUDA, or with ``num_gpus: 0``, the run is CPU + fp32 and one
  warning line says what was asked and what runs. Several GPUs / nodes: launch with ``torchrun``, or ``srun``
  (one task per GPU; ``SLURM_PROCID``/``SLURM_LOCALID``/``SLURM_NTASKS`` become torch's ranks, ``MASTER_ADDR``/
  ``MASTER_PORT`` exported by the user), as the rest of the project; each rank takes its share of the batches and gradients
  are all-reduced (the EMA teacher then stays identical on every rank); rank 0 writes logs and checkpoints.
* Outputs (NeuroVFM's layout): ``exp_root/tb/`` (TensorBoard), ``exp_root/csv/metrics.csv`` (long format: step,
  epoch, metric, value; a resumed run appends, and re-run steps repeat, so read the last row per step/metric),
  ``exp_root/models/{last,epoch-XX,best-<metric>}.ckpt`` (``checkpoint``). ``infra.wandb_project`` logs to
  Weights & Biases when ``wandb`` is installed (a warning line otherwise).
* Resume: ``training.resume_checkpoint`` restores model, EMA teacher, optimiser, scheduler, scaler, epoch and
  step; data order, augmentation and masks are functions of (seed, epoch, step), so the continued run repeats
  the uninterrupted one exactly. A run whose checkpoint says it finished does nothing. Starting a new run in an
  ``exp_root`` that already holds ``models/last.ckpt`` is refused (set ``resume_checkpoint`` or a new root).
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import os

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from patches.neuro.encoders.pretrained import PretrainedLoadError, load_backbone
from patches.neuro.train import config as C
from patches.neuro.train.checkpoint import restore, save_checkpoint
from patches.neuro.train.data import DataError, StudyData, batches, discover, prefill, read_labels
from patches.neuro.train.optim import build_optimizer, build_scheduler
from patches.neuro.train.plots import plot_metrics
from patches.neuro.train.schema import ConfigError

log = logging.getLogger("patches.neuro.train")


def resolve_device(cfg: dict) -> tuple[torch.device, str, int, int]:
    """(device, precision, rank, world size), with the one CPU-fallback warning."""
    infra, prec = cfg["infra"], cfg["training"]["trainer_params"]["precision"]
    env = os.environ
    if "RANK" not in env and int(env.get("SLURM_NTASKS", "1")) > 1:  # `srun python -m patches.neuro.train ...`
        if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
            raise ConfigError("infra.num_nodes: under srun without torchrun export MASTER_ADDR (the first node) and "
                              "MASTER_PORT, or launch torchrun inside srun")
        env.update(RANK=env["SLURM_PROCID"], LOCAL_RANK=env.get("SLURM_LOCALID", "0"), WORLD_SIZE=env["SLURM_NTASKS"])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if infra["num_gpus"] * infra["num_nodes"] > 1 and world == 1 and torch.cuda.is_available():
        raise ConfigError(f"infra.num_gpus: {infra['num_gpus']} GPUs x {infra['num_nodes']} node(s) need a "
                          f"launcher: torchrun --nproc_per_node {infra['num_gpus']} -m patches.neuro.train -c CONFIG")
    if infra["num_gpus"] > 0 and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
        if infra["num_gpus"] > 0 or prec != "32":
            log.warning("no GPU in use (infra.num_gpus=%s, CUDA available: %s): running on CPU in fp32 instead of "
                        "precision=%s", infra["num_gpus"], torch.cuda.is_available(), prec)
        prec = "32"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, prec, rank, world


def build_system(cfg: dict, label_names: list[str] | None):
    from patches.neuro.train.classify import ClassificationSystem
    from patches.neuro.train.jepa import PretrainingSystem

    name, over = C.backbone_spec(C.backbone_cf(cfg), C.backbone_key(cfg))
    params, seed = cfg["system"]["params"], cfg["infra"]["seed"]
    drop = cfg["data"]["loader"]["train"]["collate_fn"]["patch_drop_rate"]
    torch.manual_seed(seed)  # identical initial weights on every rank and every launch
    try:
        if cfg["system"]["which"] == C.PRETRAIN:
            return PretrainingSystem(name, over, params, seed=seed, patch_drop_rate=drop)
        return ClassificationSystem(name, over, params, label_names, seed=seed, patch_drop_rate=drop)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{C.backbone_key(cfg)}: {exc}") from None


class Logger:
    def __init__(self, root: str, enabled: bool, cfg: dict):
        self.enabled, self.tb, self.wandb = enabled, None, None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        os.makedirs(os.path.join(root, "csv"), exist_ok=True)
        self.tb = SummaryWriter(os.path.join(root, "tb"))
        self.csv_path = os.path.join(root, "csv", "metrics.csv")
        if not os.path.exists(self.csv_path):
            with open(self.csv_path, "w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerow(["step", "epoch", "metric", "value"])
        if cfg["infra"]["wandb_project"]:
            try:
                import wandb
                self.wandb = wandb.init(project=cfg["infra"]["wandb_project"], dir=root, config=cfg,
                                        notes=str(cfg["infra"]["comment"] or ""))
            except ImportError:
                log.warning("infra.wandb_project=%r but wandb is not installed: logging to tb/ and csv/ only",
                            cfg["infra"]["wandb_project"])

    def __call__(self, step: int, epoch: int, values: dict) -> None:
        if not self.enabled or not values:
            return
        with open(self.csv_path, "a", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            for k, v in values.items():
                w.writerow([step, epoch, k, repr(float(v))])
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(dict(values, epoch=epoch), step=step)

    def close(self):
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _all_reduce_grads(params, world: int) -> None:
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def run(cfg: dict) -> int:
    device, precision, rank, world = resolve_device(cfg)
    tr, data, infra = cfg["training"], cfg["data"], cfg["infra"]
    root, seed = infra["exp_root"], infra["seed"]
    models = os.path.join(root, "models")
    if not tr["resume_checkpoint"] and os.path.exists(os.path.join(models, "last.ckpt")):
        raise ConfigError(f"infra.exp_root: {root} already holds a run (models/last.ckpt); set "
                          f"training.resume_checkpoint to continue it, or choose a new exp_root")
    pretrain = cfg["system"]["which"] == C.PRETRAIN
    train_s, val_s = discover(cfg, "train"), discover(cfg, "val")
    labels, names = None, None
    if not pretrain:
        mh = cfg["system"]["params"]["model_hyperparams"]
        names, labels = read_labels(data["study_labels"], sorted({s.study for s in train_s + val_s}),
                                    cfg["system"]["params"]["loss_cf"]["which"], mh["proj_params"]["out_dim"])
    system = build_system(cfg, names)
    mim = cfg["system"]["params"].get("proj_params", {}).get("mim", {})
    if pretrain and any(v not in (None, False) for v in mim.values()):
        log.warning("system.params.proj_params.mim is accepted but unused: the jepa loss regresses target "
                    "features directly, without a projection head")
    if tr["monitor_metric"] not in system.monitor_metrics:
        raise ConfigError(f"training.monitor_metric: {tr['monitor_metric']!r} is not logged by "
                          f"{cfg['system']['which']}; one of {list(system.monitor_metrics)}")
    lb = tr["load_backbone"]
    if lb is not None and not tr["resume_checkpoint"]:
        try:
            for enc in system.backbones():
                load_backbone(enc, lb["ckpt_path"], lb["remove_prefix"] or "")
        except PretrainedLoadError as exc:
            raise ConfigError(f"training.load_backbone: {exc}") from None
    system.to(device)
    enc_cfg = system.backbones()[0].config
    study_level = not pretrain or data["loader"]["train"]["use_study_sampler"]
    sets = {split: StudyData(s, encoder_config=enc_cfg, cfg=cfg, split=split, train=split == "train",
                             study_level=study_level if split == "train" else
                             (not pretrain or data["loader"]["val"]["use_study_sampler"]),
                             all_windows=not pretrain, labels=labels)
            for split, s in (("train", train_s), ("val", val_s))}
    prefill(list(sets.values()))
    epochs, accum = tr["trainer_params"]["max_epochs"], tr["trainer_params"]["accumulate_grad_batches"]
    n_batches = len(batches(len(sets["train"]), data["loader"]["train"], seed, 0, train=True, rank=rank, world=world))
    if n_batches == 0:
        raise ConfigError(f"data.loader.train.batch_size: {data['loader']['train']['batch_size']} leaves no batch "
                          f"({len(sets['train'])} training units, drop_last={data['loader']['train']['drop_last']})")
    steps_per_epoch = max(1, n_batches // accum)
    params = system.trainable_parameters()
    if not params:
        raise ConfigError("system.params: nothing to train (frozen backbone and no head?)")
    sp = cfg["system"]["params"]
    opt = build_optimizer(params, sp["opt_cf"])
    sched = build_scheduler(opt, sp["schd_cf"], steps_per_epoch=steps_per_epoch, epochs=epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "16-mixed")
    state = {"epoch": 0, "global_step": 0, "best": None}
    if tr["resume_checkpoint"]:
        state = restore(tr["resume_checkpoint"], system, opt)
        if state.get("system") != cfg["system"]["which"]:
            raise ConfigError(f"training.resume_checkpoint: {tr['resume_checkpoint']} is a {state.get('system')} "
                              f"checkpoint, this config trains {cfg['system']['which']}")
        sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if state["epoch"] >= epochs:
            print(f"{tr['resume_checkpoint']}: finished ({state['epoch']}/{epochs} epochs); nothing to do")
            return 0
    logger = Logger(root, rank == 0, cfg)
    amp = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    total_steps = steps_per_epoch * epochs
    loaders = {split: dict(dataset=ds, collate_fn=list, num_workers=data["loader"][split]["num_workers"])
               for split, ds in sets.items()}
    step = state["global_step"]
    monitor, mode = tr["monitor_metric"], tr["monitor_mode"]
    try:
        for epoch in range(state["epoch"], epochs):
            system.train()
            bl = batches(len(sets["train"]), data["loader"]["train"], seed, epoch, train=True, rank=rank, world=world)
            losses = []
            loader = torch.utils.data.DataLoader(batch_sampler=bl, **loaders["train"])
            for i, batch in enumerate(tqdm(loader, desc=f"epoch {epoch}", disable=rank != 0, leave=False)):
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    with _names_studies(batch):
                        loss, logs = system.training_step(batch, step)
                scaler.scale(loss / accum).backward()
                losses.append(logs["train/loss"])
                if (i + 1) % accum and i + 1 != len(bl):
                    continue
                if world > 1:
                    _all_reduce_grads(params, world)
                scaler.unscale_(opt)
                if tr["trainer_params"]["gradient_clip_val"]:
                    torch.nn.utils.clip_grad_norm_(params, tr["trainer_params"]["gradient_clip_val"])
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                step += 1
                extra = system.after_optimizer_step(step, total_steps)
                lr = sched.get_last_lr()[0]
                sched.step()
                if step % infra["log_every_n_steps"] == 0:
                    logger(step, epoch, {"train/loss_step": float(np.mean(losses[-accum:])), "train/lr": lr, **extra})
            metrics = {"train/loss_epoch": float(np.mean(losses))}
            system.eval()
            system.validation_start()
            vl = batches(len(sets["val"]), data["loader"]["val"], seed, epoch, train=False)
            with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                for j, batch in enumerate(torch.utils.data.DataLoader(batch_sampler=vl, **loaders["val"])):
                    with _names_studies(batch):
                        system.validation_step(batch, j)
            metrics.update(system.validation_end())
            if infra["log_gpu"] and device.type == "cuda":
                metrics["gpu/max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            logger(step, epoch, metrics)
            state = {"system": cfg["system"]["which"], "epoch": epoch + 1, "global_step": step, "best": state["best"],
                     "scheduler": sched.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                     "metrics": metrics}
            if rank == 0:
                _checkpoints(models, system, opt, state, monitor, mode, metrics, epoch, tr["checkpoint_every_n_epochs"])
                plot_metrics(root)
            if world > 1:
                dist.barrier()
            if rank == 0:
                print(json.dumps({"epoch": epoch + 1, "step": step, **{k: round(v, 5) for k, v in metrics.items()
                                                                         if k.count("/") == 1}}))
    finally:
        logger.close()
    return 0


@contextlib.contextmanager
def _names_studies(batch):
    """An encoder's refusal of an item (e.g. a volume smaller than one token) becomes a data error naming the
    batch's studies (exit 2) instead of a traceback."""
    try:
        yield
    except (ConfigError, DataError):
        raise
    except ValueError as exc:
        raise DataError(f"studies {sorted({u['study'] for u in batch})}: {exc}") from None


def _checkpoints(models, system, opt, state, monitor, mode, metrics, epoch, every) -> None:
    value = metrics.get(monitor)
    best = state["best"]
    if value is not None and np.isfinite(value) and (
            best is None or (value < best["value"] if mode == "min" else value > best["value"])):
        state["best"] = {"metric": monitor, "value": value, "epoch": epoch + 1}
        save_checkpoint(os.path.join(models, f"best-{monitor.replace('/', '_')}.ckpt"), system, opt, state)
    if (epoch + 1) % every == 0:
        save_checkpoint(os.path.join(models, f"epoch-{epoch + 1:02d}.ckpt"), system, opt, state)
    save_checkpoint(os.path.join(models, "last.ckpt"), system, opt, state)
