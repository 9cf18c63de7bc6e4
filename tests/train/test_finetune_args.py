"""Finetune arguments, DeepSpeed configs, launcher command lines, resume-point choice and SLURM env mapping.

All in-process or ``DRY_RUN`` launcher calls: no training here.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from internvl.train.arguments import resolve_deepspeed_config
from internvl.train.internvl_chat_finetune import parse_args, slurm_to_torch_env
from internvl.train.trainer_utils import last_complete_checkpoint, resolve_resume

from finetune_helpers import REPO, launcher_env

LAUNCHERS = sorted(str(p.relative_to(REPO)) for p in (REPO / "shell").rglob("*.sh")
                   if p.parent.name in ("2nd_finetune", "demo") and p.name != "run_demo.sh"
                   and not p.name.endswith("_srun.sh"))


def test_internvl_flags_and_legacy_names(tmp_path):
    model_args, data_args, args, plugins = parse_args([
        "--model_name_or_path", "m", "--output_dir", str(tmp_path), "--meta_path", "meta.json",
        "--conv_style", "Hermes-2", "--freeze_llm", "True", "--use_llm_lora", "16", "--unfreeze_lm_head", "True",
        "--unfreeze_vit_layers", "-2", "--vision_select_layer", "-1", "--max_dynamic_patch", "6",
        "--evaluation_strategy", "no", "--group_by_length", "True", "--warmup_ratio", "0.03",
        "--overwrite_output_dir", "True", "--plugins", "pkg.a", "--plugins", "pkg.b"])
    assert model_args.freeze_llm and model_args.use_llm_lora == 16 and model_args.unfreeze_lm_head
    assert model_args.unfreeze_vit_layers == -2 and data_args.conv_style == "Hermes-2"
    assert data_args.max_dynamic_patch == 6
    assert args.eval_strategy == "no" and args.train_sampling_strategy == "group_by_length"
    assert args.warmup_steps == pytest.approx(0.03) and args.overwrite_output_dir
    assert plugins == ["pkg.a", "pkg.b"]
    # our defaults: tensorboard, keep pixel_values/image_flags, count non-padding tokens
    assert args.report_to == ["tensorboard"] and args.remove_unused_columns is False
    assert args.include_num_input_tokens_seen == "non_padding"


def test_bad_values_are_named(tmp_path):
    with pytest.raises(ValueError, match="--vision_overrides"):
        parse_args(["--model_name_or_path", "m", "--output_dir", str(tmp_path), "--vision_model", "x",
                    "--vision_overrides", "{not json"])
    with pytest.raises(ValueError, match="--bad_sample_budget"):
        parse_args(["--model_name_or_path", "m", "--output_dir", str(tmp_path), "--bad_sample_budget", "3"])
    with pytest.raises(FileNotFoundError, match="no_such_config.json"):
        parse_args(["--model_name_or_path", "m", "--output_dir", str(tmp_path), "--deepspeed", "no_such_config.json"])


def test_deepspeed_config_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a bare name not in the cwd resolves next to internvl_chat/
    path = resolve_deepspeed_config("zero_stage3_config.json")
    assert Path(path) == REPO / "internvl_chat" / "zero_stage3_config.json"
    _, _, args, _ = parse_args(["--model_name_or_path", "m", "--output_dir", str(tmp_path),
                                "--deepspeed", "zero_stage2_config.json"])
    import torch

    if not torch.cuda.is_available():  # CPU: torch's AdamW instead of DeepSpeed's JIT-built CPU Adam
        assert args.deepspeed["optimizer"]["params"]["torch_adam"] is True
        assert args.use_cpu is True


def test_zero_configs_have_internvl_values():
    cfg = {n: json.loads((REPO / "internvl_chat" / f"zero_stage{n}_config.json").read_text()) for n in (1, 2, 3)}
    for n, c in cfg.items():
        assert c["zero_optimization"]["stage"] == n
        assert c["bf16"]["enabled"] == "auto" and c["fp16"]["initial_scale_power"] == 32
        assert c["optimizer"]["type"] == "AdamW" and c["optimizer"]["params"]["eps"] == 1e-8
        assert all(c[k] == "auto" for k in ("gradient_accumulation_steps", "gradient_clipping", "train_batch_size",
                                            "train_micro_batch_size_per_gpu"))
    assert cfg[1]["zero_optimization"]["reduce_bucket_size"] == 1e9
    assert cfg[2]["zero_optimization"]["reduce_bucket_size"] == 1e8
    assert cfg[3]["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert cfg[3]["zero_optimization"]["stage3_param_persistence_threshold"] == 1e7


def _dry_run(script: str, *flags: str, **env: str) -> list[str]:
    env = {"INTERNVL_DEVICE": "cpu", **env}
    proc = subprocess.run(["sh", script, *flags], cwd=REPO, env=launcher_env(DRY_RUN="1", **env),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def _flag(argv: list[str], name: str) -> str:
    """The value of the last ``name`` in argv (what argparse keeps)."""
    idx = [i for i, a in enumerate(argv) if a == name]
    assert idx, f"{name} not in {argv}"
    return argv[idx[-1] + 1]


@pytest.mark.parametrize("script", LAUNCHERS)
def test_launchers_are_posix_and_derive_accumulation(script):
    assert subprocess.run(["sh", "-n", script], cwd=REPO).returncode == 0
    argv = _dry_run(script, "--max_steps", "3", "--learning_rate", "9e-9", GPUS="2", BATCH_SIZE="32",
                    PER_DEVICE_BATCH_SIZE="4", OUTPUT_DIR="/tmp/o")
    assert argv[argv.index("--nproc_per_node=2")] and "internvl_chat/internvl/train/internvl_chat_finetune.py" in argv
    assert _flag(argv, "--gradient_accumulation_steps") == "4"  # 32 / 4 / 2
    assert _flag(argv, "--per_device_train_batch_size") == "4" and _flag(argv, "--output_dir") == "/tmp/o"
    assert _flag(argv, "--bf16") == "False" and _flag(argv, "--fp16") == "False"  # no CUDA
    assert argv[-4:] == ["--max_steps", "3", "--learning_rate", "9e-9"]  # user flags last: they win
    assert _flag(argv, "--learning_rate") == "9e-9"


@pytest.mark.parametrize("device, bf16, fp16", [("cuda-bf16", "True", "False"), ("cuda-fp16", "False", "True"),
                                                ("cpu", "False", "False")])
def test_launcher_precision_follows_the_device(device, bf16, fp16):
    argv = _dry_run("shell/demo/finetune_tiny.sh", INTERNVL_DEVICE=device)
    assert (_flag(argv, "--bf16"), _flag(argv, "--fp16")) == (bf16, fp16)


def test_launcher_env_errors_and_slurm():
    bad = subprocess.run(["sh", "shell/demo/finetune_tiny.sh"], cwd=REPO, capture_output=True, text=True,
                         env=launcher_env(DRY_RUN="1", INTERNVL_DEVICE="cpu", GPUS="two"))
    assert bad.returncode != 0 and "GPUS must be a whole number" in bad.stderr
    small = subprocess.run(["sh", "shell/demo/finetune_tiny.sh"], cwd=REPO, capture_output=True, text=True,
                           env=launcher_env(DRY_RUN="1", INTERNVL_DEVICE="cpu", GPUS="4", BATCH_SIZE="4",
                                            PER_DEVICE_BATCH_SIZE="2"))
    assert small.returncode != 0 and "smaller than" in small.stderr
    argv = _dry_run("shell/internvl2.5/2nd_finetune/internvl2_5_1b_dynamic_res_2nd_finetune_full_srun.sh",
                    PARTITION="p", GPUS="16", GPUS_PER_NODE="8", QUOTA_TYPE="spot")
    assert argv[0] == "srun" and "--ntasks=16" in argv and "--nodes=2" in argv and "--quotatype=spot" in argv
    assert _flag(argv, "--gradient_accumulation_steps") == "2"  # 128 / 4 / 16


def test_slurm_env_mapping(tmp_path):
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho node-a\necho node-b\n")
    fake.chmod(0o755)
    env = {"LAUNCHER": "slurm", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8",
           "SLURM_NTASKS_PER_NODE": "4(x2)", "SLURM_NODELIST": "node-[a-b]",
           "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    assert slurm_to_torch_env(env) is True
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"]) == ("5", "1", "8", "4")
    assert env["MASTER_ADDR"] == "node-a" and env["MASTER_PORT"] == "29500"
    under_torchrun = {"LAUNCHER": "slurm", "SLURM_PROCID": "0", "RANK": "3"}
    assert slurm_to_torch_env(under_torchrun) is False and under_torchrun["RANK"] == "3"


class _Args:
    def __init__(self, out, resume=None, overwrite=False):
        self.output_dir, self.resume_from_checkpoint, self.overwrite_output_dir = str(out), resume, overwrite
        self.process_index = 0


def _checkpoint(out: Path, step: int, complete: bool = True) -> Path:
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"x")
    if complete:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_resume_point_skips_incomplete_and_staging(tmp_path):
    good = _checkpoint(tmp_path, 5)
    _checkpoint(tmp_path, 10, complete=False)  # crashed while writing (no trainer_state.json)
    staging = tmp_path / "tmp-checkpoint-15"
    (staging / "checkpoint-15").mkdir(parents=True)
    assert last_complete_checkpoint(str(tmp_path)) == str(good)
    assert resolve_resume(_Args(tmp_path)) == str(good)
    assert not staging.exists()  # a staging folder is by definition incomplete: removed
    assert resolve_resume(_Args(tmp_path, overwrite=True)) is None
    assert resolve_resume(_Args(tmp_path, resume="last")) == str(good)
    with pytest.raises(FileNotFoundError, match="incomplete"):
        resolve_resume(_Args(tmp_path, resume=str(tmp_path / "checkpoint-10")))
    assert resolve_resume(_Args(tmp_path / "fresh")) is None


def test_one_json_file_holds_all_arguments(tmp_path):
    config = {"model_name_or_path": "m", "output_dir": str(tmp_path), "use_llm_lora": 8, "conv_style": "internvl2_5",
              "learning_rate": 2e-5, "plugins": ["pkg.c"]}
    path = tmp_path / "args.json"
    path.write_text(json.dumps(config))
    model_args, data_args, args, plugins = parse_args([str(path)])
    assert model_args.use_llm_lora == 8 and data_args.conv_style == "internvl2_5"
    assert args.learning_rate == pytest.approx(2e-5) and plugins == ["pkg.c"]
