"""Brainfound's published command lines: flags -> config, a few steps of each on the tiny preset (CPU), weights-only
``--resume``, and the launchers (deprecated ``torch.distributed.launch`` with ``--local-rank``, ``accelerate launch
--config_file single.yaml``) as subprocesses."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bf_helpers import REPO, tiny_ddpm_config


def _flags(root: Path, demo: dict, name: str, *extra: str) -> list[str]:
    """Brainfound's stage-2 flags (as published, values scaled down) + where the tiny demo data is."""
    return ["--exp_name", name, "--output_root", str(root), "--model", "tiny", "--epochs", "1",
            "--sentence_shuffle", "true", "--validation", "true", "--valid_save_image_freq", "12",
            "--tie_text_encoder_decoder", "true", "--momentum", "0.99", "--lr", "1e-3", "--valid_freq", "1",
            "--batch_size", "8", "--train_print_freq", "2",
            "--set", f"data.train_jsonl={demo['stage2_train']}", "--set", f"eval.test_jsonl={demo['stage2_test']}",
            "--set", "model.init_from=null", "--set", "eval.valid_at_start=false", *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "internvl_chat"), str(REPO)]),
            "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_flags_map_onto_the_stage2_config():
    from patches.brainfound.brainfound_cli import parse

    args, cfg = parse(["--exp_name", "e1", "--epochs", "50", "--model", "v5", "--sentence_shuffle", "false",
                       "--validation", "true", "--valid_save_image_freq", "100", "--tie_text_encoder_decoder",
                       "false", "--momentum", "0.996", "--lr", "1e-6", "--resume", "x.pth", "--valid_freq", "1",
                       "--batch_size", "3", "--train_print_freq", "100", "--local-rank=0"], "t")
    assert cfg["train"]["output_dir"] == str(Path("work_dirs/brainfound/e1"))
    assert (cfg["train"]["epochs"], cfg["train"]["batch_size"], cfg["train"]["lr"], cfg["train"]["text_lr"],
            cfg["train"]["log_steps"]) == (50, 3, 1e-6, 1e-6, 100)
    assert (cfg["clip"]["momentum"], cfg["clip"]["tie_text_encoder_decoder"], cfg["data"]["sentence_shuffle"]) == \
        (0.996, False, False)
    assert (cfg["eval"]["validation"], cfg["eval"]["valid_freq"], cfg["eval"]["valid_save_image_freq"]) == \
        (True, 1, 100)
    assert cfg["model"]["preset"] == "full" and args.resume == "x.pth" and args.local_rank == 0
    _, tiny = parse(["--model", "tiny", "--local_rank", "0", "--set", "train.lr=0.5"], "t")
    assert tiny["model"]["preset"] == "tiny" and tiny["train"]["lr"] == 0.5  # --set wins over the flags


def test_bad_flags_and_files_are_one_error_line(tmp_path, capsys):
    from patches.brainfound import pretrain, zero_shot_cls
    from patches.brainfound.brainfound_cli import run_cli

    with pytest.raises(SystemExit) as exc:
        run_cli(pretrain.main, ["--sentence_shuffle", "maybe"])
    assert exc.value.code == 2 and "expected true or false" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run_cli(zero_shot_cls.main, ["--model", "tiny", "--resume", str(tmp_path / "nothing_here"),
                                     "--set", "eval.test_jsonl=x.jsonl"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and "nothing_here" in err and len(err.splitlines()) == 1


def test_pretrain_and_zero_shot_cls_command_lines(tmp_path, bf_demo, capsys):
    """``pretrain`` with Brainfound's flags: one epoch (6 steps), validation writes reports + images, tied decoder;
    ``zero_shot_cls`` with the same flags on the export, and on a Brainfound-style ``.pth`` read weights-only."""
    from patches.brainfound import pretrain, zero_shot_cls
    from patches.brainfound.brainfound_cli import run_cli

    valid_rows = bf_demo["stage2_test"].read_text().splitlines()[:6]  # a short validation set keeps this fast
    (bf_demo["stage2_test"].parent / "valid6.jsonl").write_text("\n".join(valid_rows) + "\n")
    short_valid = ["--set", f"eval.valid_jsonl={bf_demo['stage2_test'].parent / 'valid6.jsonl'}",
                   "--valid_save_image_freq", "4"]
    res = pretrain.main(_flags(tmp_path, bf_demo, "run", "--local-rank=0", *short_valid))
    out = tmp_path / "run"
    assert [h[0] for h in res["history"]] == [2, 4, 6] and res["columns"][-1] == "lm_loss"
    valid = json.loads((out / "valid/epoch_001/metrics.json").read_text())
    assert valid["n"] == 6 and {"bleu4", "rouge_l", "meteor"} <= set(valid)
    assert sorted(p.name for p in (out / "valid/epoch_001").glob("*.png")) == ["scan_0000.png", "scan_0004.png"]
    assert json.loads((out / "clip_config.json").read_text())["clip"]["tie_text_encoder_decoder"] is True

    # report generation from the export (beam search), as validation does it: same reports, same scores
    from patches.brainfound import report_eval

    gen = report_eval.main(["--model", str(out), "--data", str(bf_demo["stage2_test"].parent / "valid6.jsonl"),
                            "--out", str(tmp_path / "reports")])
    assert gen["bleu4"] == pytest.approx(valid["bleu4"]) and gen["meteor"] == pytest.approx(valid["meteor"])
    assert (tmp_path / "reports/reports.jsonl").read_text() == (out / "valid/epoch_001/reports.jsonl").read_text()

    zs = zero_shot_cls.main(_flags(tmp_path, bf_demo, "run"))
    assert zs["n"] == 24 and (out / "zero_shot/metrics.json").is_file()
    # a Brainfound-style checkpoint: {"model": state_dict, "epoch": ...} via torch.save; read with weights_only
    state = load_file(str(out / "checkpoint-6/model.safetensors"))
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 0}, tmp_path / "bf.pth")
    zs_file = zero_shot_cls.main(_flags(tmp_path, bf_demo, "from_file", "--resume", str(tmp_path / "bf.pth")))
    assert zs_file["accuracy"] == pytest.approx(zs["accuracy"])
    # stage 2 initialised from that file (weights only): starts at step 0 from exactly those weights
    again = pretrain.main(_flags(tmp_path, bf_demo, "init_file", "--resume", str(tmp_path / "bf.pth"),
                                 "--validation", "false", "--set", "train.epochs=null", "--set", "train.max_steps=1",
                                 "--set", "eval.classes=null", "--lr", "0"))
    assert again["steps"] == 1
    moved = load_file(str(tmp_path / "init_file/checkpoint-1/model.safetensors"))
    assert torch.equal(moved["vision.unet.conv_in.weight"], state["vision.unet.conv_in.weight"])  # lr 0
    # a pickle that would need code to load is refused, not executed
    torch.save({"model": state, "args": argparse.Namespace(lr=1)}, tmp_path / "unsafe.pth")
    with pytest.raises(SystemExit) as exc:
        run_cli(pretrain.main, _flags(tmp_path, bf_demo, "unsafe", "--resume", str(tmp_path / "unsafe.pth")))
    assert exc.value.code == 2 and "cannot be read weights-only" in capsys.readouterr().err


@pytest.mark.slow
def test_deprecated_distributed_launch_runs_pretrain(tmp_path, bf_demo):
    """``python -m torch.distributed.launch ... -m patches.brainfound.pretrain`` (it passes ``--local-rank``).
    Slow (a subprocess importing torch); the in-process tests pass ``--local-rank`` / ``--local_rank`` too, and
    ``shell/brainfound/demo.sh`` runs stage 2 under torchrun and stage 1 under ``accelerate launch``."""
    cmd = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=1", "-m", "patches.brainfound.pretrain",
           *_flags(tmp_path, bf_demo, "ddl", "--set", "train.epochs=null", "--set", "train.max_steps=2",
                   "--validation", "false", "--set", "eval.classes=null")]
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "ddl/checkpoint-2/trainer_state.json").is_file()


@pytest.mark.slow
def test_accelerate_launch_single_yaml_ddpm_and_generate(tmp_path, bf_demo):
    """Brainfound's stage-1 lines: ``accelerate launch --num_processes=1 --config_file single.yaml`` for
    ``pretrain_ddpm`` and ``generate`` (2 DDPM steps, 2 sampling steps)."""
    cfg = tiny_ddpm_config(tmp_path, bf_demo["stage1_manifest"], max_steps=2, save_steps=2, log_steps=1)
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--num_processes=1", "--config_file",
              str(REPO / "shell/brainfound/single.yaml"), "-m"]
    for args in (["patches.brainfound.pretrain_ddpm", "--config", str(cfg)],
                 ["patches.brainfound.generate", "--model", str(tmp_path / "out"), "--num", "2", "--steps", "2",
                  "--out", str(tmp_path / "grid.png")]):
        done = subprocess.run(launch + args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out/unet/config.json").is_file() and (tmp_path / "grid.png").is_file()
