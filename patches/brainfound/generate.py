"""Sample brain slices from a stage-1 Brainfound UNet and save them as a PNG grid.

    python -m patches.brainfound.generate --model work_dirs/brainfound/stage1 --modality CT --num 16 \\
        --scheduler ddim --steps 50 --out samples.png
    accelerate launch --num_processes=1 --config_file shell/brainfound/single.yaml -m patches.brainfound.generate

``--model`` is a stage-1 output dir (``unet/`` + ``scheduler/``) or its ``unet/`` dir. The condition is the stored
modality embedding for ``--modality``. ``--scheduler`` picks a diffusers scheduler built from the training noise
schedule (``ddpm``: ancestral, as trained, use all steps; ``ddim``: deterministic, few steps). Images are mapped
from [-1, 1] to grey levels, laid out ``--cols`` per row, and written atomically; ``--save_npy`` also keeps the raw
samples. The sampler's noise comes from ``--seed``: the same seed gives the same grid.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from patches.brainfound.train_utils import add_launcher_args
from patches.brainfound.weights import MODALITY_FILE

SCHEDULERS = ("ddpm", "ddim", "dpm")


def load_stage1(model_dir: str | os.PathLike, device: str = "cpu"):
    """(unet, modality names, modality embedding [M, E], noise scheduler config dict)."""
    from diffusers import UNet2DConditionModel
    from safetensors import safe_open

    root = Path(model_dir)
    unet_dir = root / "unet" if (root / "unet").is_dir() else root
    sched_dir = unet_dir.parent / "scheduler"
    if not (unet_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: no stage-1 UNet (expected unet/config.json)")
    unet = UNet2DConditionModel.from_pretrained(str(unet_dir)).to(device).eval()
    with safe_open(str(unet_dir / MODALITY_FILE), framework="pt") as fh:
        names = json.loads(fh.metadata()["modalities"])
        cond = fh.get_tensor("modality_embedding")
    sched_cfg = json.loads((sched_dir / "scheduler_config.json").read_text()) if sched_dir.is_dir() else {}
    return unet, names, cond, sched_cfg


def make_scheduler(kind: str, sched_cfg: dict):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}[kind]
    keep = {k: v for k, v in sched_cfg.items() if not k.startswith("_")}
    if not keep:
        return cls()
    return cls.from_config(keep)


@torch.no_grad()
def sample(unet, cond_row: torch.Tensor, scheduler, num: int, steps: int, seed: int, batch_size: int = 16,
           progress: bool = True) -> torch.Tensor:
    """``[num, C, S, S]`` samples in [-1, 1]."""
    device = next(unet.parameters()).device
    size, ch = unet.config.sample_size, unet.config.in_channels
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, num, batch_size):
        n = min(batch_size, num - start)
        x = torch.randn(n, ch, size, size, generator=g).to(device) * scheduler.init_noise_sigma
        scheduler.set_timesteps(steps, device=device)
        cond = cond_row.to(device).view(1, 1, -1).expand(n, 1, -1)
        for t in tqdm(scheduler.timesteps, disable=not progress, desc=f"sampling {start + n}/{num}"):
            eps = unet(scheduler.scale_model_input(x, t), t, encoder_hidden_states=cond).sample
            x = scheduler.step(eps, t, x, generator=g).prev_sample
        out.append(x.clamp(-1, 1).cpu())
    return torch.cat(out)


def save_grid(images: torch.Tensor, path: str | os.PathLike, cols: int = 4, title: str | None = None) -> Path:
    """Grey grid of ``[N, C, S, S]`` in [-1, 1] (channel mean), written with matplotlib (Agg) atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = images.shape[0]
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2 * rows + (0.4 if title else 0)), squeeze=False)
    grey = ((images.float().mean(1) + 1) / 2).clamp(0, 1).numpy()
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(grey[i], cmap="gray", vmin=0, vmax=1)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Sample slices from a Brainfound stage-1 UNet into a PNG grid")
    p.add_argument("--model", default="work_dirs/brainfound/stage1",
                   help="stage-1 output dir (or its unet/ dir); default: the output of configs/ddpm.yaml")
    p.add_argument("--modality", default="CT")
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--cols", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--scheduler", choices=SCHEDULERS, default="ddim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--out", default=None, help="PNG path (default <model>/samples_<modality>.png)")
    p.add_argument("--save_npy", action="store_true", help="also write the raw samples next to the PNG")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_launcher_args(p)
    args = p.parse_args(argv)

    unet, names, cond, sched_cfg = load_stage1(args.model, args.device)
    if args.modality not in names:
        raise ValueError(f"--modality {args.modality!r} is not one of {names}")
    scheduler = make_scheduler(args.scheduler, sched_cfg)
    if args.steps > scheduler.config.num_train_timesteps:
        raise ValueError(f"--steps {args.steps} exceeds the {scheduler.config.num_train_timesteps} training steps")
    imgs = sample(unet, cond[names.index(args.modality)], scheduler, args.num, args.steps, args.seed,
                  args.batch_size)
    out = Path(args.out or Path(args.model) / f"samples_{args.modality}.png")
    save_grid(imgs, out, args.cols, f"Brainfound {args.modality}: {args.scheduler} {args.steps} steps")
    result = {"png": str(out), "num": int(imgs.shape[0]), "mean": float(imgs.mean()), "std": float(imgs.std())}
    if args.save_npy:
        npy = out.with_suffix(".npy")
        tmp = npy.with_name(f".{npy.stem}.tmp.npy")
        np.save(tmp, imgs.numpy())
        os.replace(tmp, npy)
        result["npy"] = str(npy)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    from patches.brainfound.brainfound_cli import run_cli

    run_cli(main)
