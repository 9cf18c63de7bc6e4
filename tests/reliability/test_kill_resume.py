"""Kill tests, as a user meets them: ``sh shell/demo/finetune_tiny.sh`` killed with SIGKILL (the whole process
group, as ``kill -9 -PGID`` or a lost terminal does) at awkward moments, then launched again with the same command.

* killed while a checkpoint is being written: the relaunch resumes from the last complete checkpoint and ends
  with the uninterrupted run's losses and weights;
* killed after the last checkpoint, before the final model was saved: the relaunch trains no step past
  ``--max_steps`` and saves the last checkpoint's weights;
* a finished run launched again says so and changes no file (the launcher's own log gets one more line);
* two processes under torchrun: killing the launcher's process group leaves no worker running.

These are the slowest reliability tests (marked ``kill``); they run in the default suite and in CI.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
STEPS, SAVE = 8, 2
pytestmark = pytest.mark.kill


def _env(model, meta, out, gpus="1"):
    env = dict(os.environ, PYTHON=sys.executable, INTERNVL_NO_PLUGINS="1", GPUS=gpus, PER_DEVICE_BATCH_SIZE="2",
               BATCH_SIZE=str(2 * int(gpus)), MODEL=str(model), META_PATH=str(meta), OUTPUT_DIR=str(out),
               TOKENIZERS_PARALLELISM="false")
    env.pop("MASTER_PORT", None)
    return env


FLAGS = ["--max_steps", str(STEPS), "--save_steps", str(SAVE), "--save_total_limit", "2", "--logging_steps", "1",
         "--lr_scheduler_type", "constant", "--warmup_ratio", "0", "--learning_rate", "1e-3", "--seed", "3",
         "--data_seed", "7", "--report_to", "none", "--dynamic_image_size", "False"]


def _launch(env, *extra, **kw):
    return subprocess.Popen(["sh", "shell/demo/finetune_tiny.sh", *FLAGS, *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def _run(env, *extra) -> str:
    proc = _launch(env, *extra)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-4000:]
    return out


def _losses(out: Path) -> dict[int, float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _snapshot(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "training_log.txt"}


@pytest.fixture(scope="module")
def reference(tiny_model_dir, small_demo_meta, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    _run(_env(tiny_model_dir, small_demo_meta, out))
    return out


@pytest.fixture(scope="module")
def small_demo_meta(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    subprocess.run([sys.executable, str(REPO / "data" / "build_demo.py"), "--out", str(out), "--train", "48",
                    "--test-mcq", "4", "--test-open", "2"], check=True, cwd=REPO, capture_output=True)
    return out / "train_meta.json"


def test_finished_run_relaunched_changes_nothing(reference, tiny_model_dir, small_demo_meta):
    assert sorted(_losses(reference)) == list(range(1, STEPS + 1))
    before = _snapshot(reference)
    log = _run(_env(tiny_model_dir, small_demo_meta, reference))
    assert "already holds a finished run" in log
    assert _snapshot(reference) == before


def test_killed_during_a_checkpoint_write_resumes_to_the_same_run(reference, tiny_model_dir, small_demo_meta,
                                                                  tmp_path):
    out = tmp_path / "killed"
    env = _env(tiny_model_dir, small_demo_meta, out)
    proc = _launch(env)
    deadline, killed_in = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None:  # the moment a later checkpoint's staging folder exists
        staging = sorted(out.glob("tmp-checkpoint-*")) if out.exists() else []
        if any(p.name.endswith(f"-{2 * SAVE}") or p.name.endswith(f"-{3 * SAVE}") for p in staging):
            killed_in = [p.name for p in staging]
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert killed_in, "the run ended before a checkpoint write could be interrupted"
    log = _run(env)
    assert "auto-resume: continuing from" in log
    resumed, ref = _losses(out), _losses(reference)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert resumed[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6), (step, killed_in)
    a, b = _weights(out), _weights(reference)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert not list(out.glob("tmp-checkpoint-*"))


def test_killed_before_the_final_save_trains_no_extra_step(reference, tiny_model_dir, small_demo_meta, tmp_path):
    import shutil

    out = tmp_path / "unsaved"
    out.mkdir()
    last = out / f"checkpoint-{STEPS}"
    shutil.copytree(reference / f"checkpoint-{STEPS}", last)  # what a kill between the two saves leaves
    _run(_env(tiny_model_dir, small_demo_meta, out))
    assert not (out / f"checkpoint-{STEPS + 1}").exists()
    a, b = _weights(out), _weights(last)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "training_finished.json").read_text())["global_step"] == STEPS


def test_killing_the_launcher_group_leaves_no_worker(tiny_model_dir, small_demo_meta, tmp_path):
    out = tmp_path / "two"
    proc = _launch(_env(tiny_model_dir, small_demo_meta, out, gpus="2"), "--max_steps", "2000")
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "training_log.txt").exists():
        time.sleep(0.2)
    while time.time() < deadline and "'loss'" not in (out / "training_log.txt").read_text():
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(3)
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    alive = [line for line in ps.splitlines() if str(out) in line]
    assert not alive, alive
