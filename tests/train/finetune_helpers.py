"""Helpers of the finetune tests: run a launcher as a user does, read the logged losses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_LAUNCHER = "shell/demo/finetune_tiny.sh"


def launcher_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHON=sys.executable, INTERNVL_NO_PLUGINS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("MASTER_PORT", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_launcher(*flags: str, timeout: float = 300, script: str = DEMO_LAUNCHER, **env: str):
    """Run a launcher with ``sh``; fail the test with the output's tail when it exits non-zero."""
    try:
        proc = subprocess.run(["sh", script, *flags], cwd=REPO, env=launcher_env(**env), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-4000:]
        pytest.fail(f"{script} did not finish in {timeout}s (hang?); output tail:\n{tail!r}")
    if proc.returncode != 0:
        pytest.fail(f"{script} exited {proc.returncode}; output tail:\n{(proc.stdout + proc.stderr)[-6000:]}")
    return proc


def logged_losses(output_dir: Path) -> dict[int, float]:
    """``{step: loss}`` from ``trainer_state.json`` (the final one, or the given checkpoint's)."""
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}
