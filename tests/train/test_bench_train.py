"""``python -m internvl.tools.bench_train``: the padding arithmetic, the flags, the 1B plan and one tiny run.

The tiny run trains 8 rows (2 unpacked steps, 1 of warm-up) each way in its own process, so it checks the plumbing and
the bookkeeping (same rows and order in every way: equal first losses and the counted tokens equal the lengths),
not the speed; the measured figures are in the README section "Training throughput (bench_train)".
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from internvl.tools.bench_data import BatchStats, padded_batches, total, write_skewed_dataset
from internvl.tools.bench_train import main, packing_available

REPO = Path(__file__).resolve().parents[2]


def test_padding_share_of_a_hand_made_batch():
    batch = BatchStats.of_batch([10, 4, 6])  # 3 rows padded to 10: 30 slots, 20 real
    assert (batch.real_tokens, batch.slots, batch.samples) == (20, 30, 3)
    assert batch.padding_share == pytest.approx(10 / 30)
    assert BatchStats.of_batch([7, 7]).padding_share == 0.0
    steps = padded_batches([10, 4, 6, 3, 3], batch_size=2)  # [10, 4] [6, 3] [3]: slots 20 + 12 + 3
    assert [s.slots for s in steps] == [20, 12, 3]
    assert total(steps).padding_share == pytest.approx((35 - 26) / 35)
    assert len(padded_batches([1, 2, 3, 4, 5], 2, steps=2)) == 2
    with pytest.raises(ValueError):
        BatchStats.of_batch([])


def test_skewed_dataset_is_seeded_and_half_images(tmp_path):
    meta = write_skewed_dataset(tmp_path / "a", rows=20, image_size=112, seed=3)
    write_skewed_dataset(tmp_path / "b", rows=20, image_size=112, seed=3)
    rows = [json.loads(x) for x in (tmp_path / "a" / "train.jsonl").read_text().splitlines()]
    assert (tmp_path / "a" / "train.jsonl").read_text() == (tmp_path / "b" / "train.jsonl").read_text()
    assert sum("image" in r for r in rows) == 10
    assert min(len(r["conversations"][1]["value"].split()) for r in rows if "image" not in r) >= 120
    assert json.loads(meta.read_text())["bench_skewed"]["length"] == 20


@pytest.mark.parametrize("flags, message", [
    (["--ways", "plain,fast"], "--ways"),
    (["--rows", "0"], "--rows must be >= 1"),
    (["--warmup-steps", "9", "--rows", "8"], "leaves nothing to time"),
    (["--no-such-flag"], "unrecognized arguments"),
    (["--loss-reduction", "mean"], "invalid choice"),
])
def test_bad_flags_are_one_error_line(flags, message, tiny_model_dir, tmp_path, capsys):
    assert main(["--model", str(tiny_model_dir), "--work", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_internvl2_1b_dry_run_builds_the_plan_without_weights(tiny_model_dir, tmp_path, capsys):
    assert main(["--model", str(tiny_model_dir), "--work", str(tmp_path), "--arch", "internvl2-1b",
                 "--device", "cuda", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "938,158,976 parameters" in out  # InternViT-300M + Qwen2-0.5B, as the research note counts them
    assert "24x1024 at 448px (256 tokens per tile)" in out and "qwen2 24x896, vocab 151655" in out
    assert "--use_llm_lora 16" in out and "--bf16 True" in out
    assert not (tmp_path / "model-internvl2-1b").exists()


def test_tiny_run_reports_every_way(tiny_model_dir, tmp_path):
    work = tmp_path / "bench"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "internvl_chat"), str(REPO)]))
    proc = subprocess.run([sys.executable, "-m", "internvl.tools.bench_train", "--model", str(tiny_model_dir),
                           "--work", str(work), "--rows", "8", "--batch-size", "4", "--warmup-steps", "1",
                           "--max-packed-tokens", "640"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((work / "bench_train.json").read_text())
    ways = report["ways"]
    expected = ["plain", "unpacked", "packed"] if packing_available() else ["plain", "unpacked"]
    assert list(ways) == expected
    if not packing_available():
        assert "not available" in report["skipped"]["packed"] and "packed: not available" in proc.stdout
    for row in ways.values():
        assert row["real_tokens_per_s"] > 0 and row["samples_per_s"] > 0 and row["peak_mib"] > 0
        assert 0 <= row["padding_share"] < 1
    for name in ("plain", "unpacked"):
        assert ways[name]["steps"] == 2 and ways[name]["timed_steps"] == 1 and ways[name]["samples"] == 8
        assert ways[name]["tokens_check"] == "ok"
    assert ways["unpacked"]["logged_padding_check"] == "ok"  # the Trainer's own padding_share agrees
    assert ways["unpacked"]["padding_share"] == ways["plain"]["padding_share"] > 0.2  # skewed data pads a lot
    assert ways["unpacked"]["losses"][0] == pytest.approx(ways["plain"]["losses"][0], abs=1e-4)
    assert ways["plain"]["real_tokens"] == ways["unpacked"]["real_tokens"]
    assert set(report["ratios_real_tokens_per_s"]) >= {"unpacked/plain"}
    if "packed" in ways:  # every row trained once, in packs with (nearly) no padding
        assert ways["packed"]["samples"] == 8 and ways["packed"]["real_tokens"] == ways["plain"]["real_tokens"]
        assert ways["packed"]["padding_share"] < 0.05 and ways["packed"]["steps"] >= 2
        assert "packed/unpacked" in report["ratios_real_tokens_per_s"]
    table = proc.stdout.split("== unpacked (run 1 of 1) ...")[-1]
    assert "real tok/s" in table and "unpacked/plain" in table
    assert (work / "bench_train.png").stat().st_size > 1000
