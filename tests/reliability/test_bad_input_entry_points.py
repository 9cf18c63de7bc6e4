"""Every entry point turns each case of the bad-input corpus (``conftest.py``) into one named ``error:`` line with
exit status 2, a ``file:line [reason]`` report, or a counted skip; never a traceback, never silent acceptance."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from internvl.errors import EXIT_BAD_INPUT

REPO = Path(__file__).resolve().parents[2]
ROW_CASES = ["truncated_line", "non_utf8", "missing_image", "text_named_jpg", "placeholder_mismatch",
             "image_past_max_len", "empty_answer", "animated_gif"]
META_CASES = ["missing_annotation", "repeat_time_zero", "meta_key_typo", "length_not_int"]
MODEL_CASES = ["truncated_weights", "no_tokenizer", "unknown_llm"]


def _script(rel: str):
    spec = importlib.util.spec_from_file_location(Path(rel).stem, REPO / rel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _one_error_line(err: str, names: str) -> None:
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]  # splitlines also cuts at a progress bar's \r
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, err[-3000:]
    assert names in errors[0], (names, errors[0])
    assert "Traceback" not in err, err[-3000:]


# ------------------------------------------------------------------------------------------------- check_data
@pytest.mark.parametrize("name", ROW_CASES + ["missing_annotation"])
def test_check_data_reports_each_bad_row(name, corpus, tiny_model_dir, capsys):
    from internvl.tools.check_data import main

    case = corpus[name]
    code = main([str(case.meta), "--model", str(tiny_model_dir), "--max_seq_length", "80", "--no_progress"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert f"{case.where} [{case.reason}]" in out, out


@pytest.mark.parametrize("name", ["repeat_time_zero", "meta_key_typo", "length_not_int"])
def test_check_data_refuses_a_bad_meta(name, corpus, tiny_model_dir, capsys):
    from internvl.tools.check_data import main

    code = main([str(corpus[name].meta), "--model", str(tiny_model_dir), "--no_progress"])
    assert code == EXIT_BAD_INPUT
    _one_error_line(capsys.readouterr().err, corpus[name].where)


@pytest.mark.parametrize("name", MODEL_CASES)
def test_check_data_refuses_a_bad_model(name, corpus, broken_models, capsys):
    from internvl.tools.check_data import main

    code = main([str(corpus["good"].meta), "--model", str(broken_models[name]), "--no_progress"])
    if name == "truncated_weights":  # check_data reads config + tokenizer only: the weights are not its business
        assert code == 0
        return
    assert code == EXIT_BAD_INPUT
    _one_error_line(capsys.readouterr().err, str(broken_models[name]))


# ------------------------------------------------------------------------------------------------- finetune
def _finetune(model_dir, meta, out, *extra) -> int:
    from internvl.train.internvl_chat_finetune import main

    return main(["--model_name_or_path", str(model_dir), "--meta_path", str(meta), "--output_dir", str(out),
                 "--conv_style", "internvl2_5", "--force_image_size", "112", "--max_seq_length", "80",
                 "--max_steps", "2", "--per_device_train_batch_size", "1", "--train_sampling_strategy", "sequential",
                 "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0", *extra])


@pytest.mark.parametrize("name", ROW_CASES + META_CASES)
def test_finetune_bad_data_is_one_error_line(name, corpus, tiny_model_dir, tmp_path, capsys):
    case = corpus[name]
    assert _finetune(tiny_model_dir, case.meta, tmp_path / "out") == EXIT_BAD_INPUT
    _one_error_line(capsys.readouterr().err, case.where)


@pytest.mark.parametrize("name", MODEL_CASES)
def test_finetune_bad_model_is_one_error_line(name, corpus, broken_models, tmp_path, capsys):
    assert _finetune(broken_models[name], corpus["good"].meta, tmp_path / "out") == EXIT_BAD_INPUT
    _one_error_line(capsys.readouterr().err, str(broken_models[name]))


def test_finetune_skips_a_bad_row_under_the_budget(corpus, tiny_model_dir, tmp_path, capsys):
    code = _finetune(tiny_model_dir, corpus["missing_image"].meta, tmp_path / "out", "--skip_bad_samples", "True",
                     "--bad_sample_budget", "0.5")
    assert code == 0
    out = capsys.readouterr()
    log = [ln for ln in (out.out + out.err).splitlines() if "skipping bad sample" in ln]
    assert log and corpus["missing_image"].where in log[0] and "[1 of 1 allowed" in log[0], log


@pytest.mark.parametrize("gpus", ["1", "2"])
def test_launcher_prints_the_worker_line_once(gpus, corpus, tiny_model_dir, tmp_path):
    """``sh shell/...`` as a user runs it: one process runs directly, two go through torchrun's agent; either way
    the user sees the worker's one line and exit status 2, not the agent's ChildFailedError report."""
    import os
    import subprocess
    import sys

    case = corpus["missing_image"]
    env = dict(os.environ, PYTHON=sys.executable, INTERNVL_NO_PLUGINS="1", GPUS=gpus, PER_DEVICE_BATCH_SIZE="1",
               MODEL=str(tiny_model_dir), META_PATH=str(case.meta), OUTPUT_DIR=str(tmp_path / "out"))
    env.pop("MASTER_PORT", None)
    proc = subprocess.run(["sh", "shell/demo/finetune_tiny.sh", "--max_steps", "2", "--report_to", "none",
                           "--train_sampling_strategy", "sequential"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == EXIT_BAD_INPUT, (proc.stdout + proc.stderr)[-3000:]
    both = proc.stdout + proc.stderr
    assert both.count("error: ") == 1 and f"error: {case.where}" in both, both[-3000:]
    assert "Traceback" not in both and "ChildFailedError" not in both, both[-3000:]


# ------------------------------------------------------------------------------------------------- custom_eval
EVAL_ROW_CASES = ["truncated_line", "non_utf8", "missing_image", "text_named_jpg", "placeholder_mismatch",
                  "animated_gif"]


@pytest.mark.parametrize("name", EVAL_ROW_CASES + ["missing_annotation", "meta_key_typo"])
def test_custom_eval_bad_data_is_one_error_line(name, corpus, tiny_model_dir, tmp_path, capsys):
    case = corpus[name]
    main = _script("eval/custom_eval.py").main
    code = main(["--model", str(tiny_model_dir), "--data", str(case.meta), "--out", str(tmp_path / "r.json"),
                 "--max-new-tokens", "2", "--no-progress", "--device", "cpu"])
    assert code == EXIT_BAD_INPUT
    _one_error_line(capsys.readouterr().err, case.where)


def test_custom_eval_counts_unreadable_rows_under_max_skip(corpus, tiny_model_dir, tmp_path):
    main = _script("eval/custom_eval.py").main
    out = tmp_path / "r.json"
    assert main(["--model", str(tiny_model_dir), "--data", str(corpus["missing_image"].meta), "--out", str(out),
                 "--max-new-tokens", "2", "--no-progress", "--device", "cpu", "--max-skip", "1"]) == 0
    res = json.loads(out.read_text())
    assert res["summary"]["n_skipped"] == 1 and res["skipped"][0]["line"] == 1


@pytest.mark.parametrize("name", MODEL_CASES)
def test_custom_eval_bad_model_is_one_error_line(name, corpus, broken_models, tmp_path, capsys):
    main = _script("eval/custom_eval.py").main
    code = main(["--model", str(broken_models[name]), "--data", str(corpus["good"].meta),
                 "--out", str(tmp_path / "r.json"), "--no-progress", "--device", "cpu"])
    assert code == EXIT_BAD_INPUT
    _one_error_line(capsys.readouterr().err, str(broken_models[name]))


# ------------------------------------------------------------------------------------------------- inference_v2
@pytest.mark.parametrize("image", ["nope.png", "text.jpg", "anim.gif"])
def test_inference_bad_image_is_one_error_line(image, corpus, tiny_model_dir, capsys):
    path = corpus["good"].meta.parent.parent / image
    main = _script("inference_v2.py").main
    code = main(["--model", str(tiny_model_dir), "--image", str(path), "--question", "?", "--no-stream",
                 "--device", "cpu"])
    assert code == EXIT_BAD_INPUT
    _one_error_line(capsys.readouterr().err, str(path))


@pytest.mark.parametrize("name", MODEL_CASES)
def test_inference_bad_model_is_one_error_line(name, broken_models, capsys):
    main = _script("inference_v2.py").main
    code = main(["--model", str(broken_models[name]), "--question", "?", "--no-stream", "--device", "cpu"])
    assert code == EXIT_BAD_INPUT
    _one_error_line(capsys.readouterr().err, str(broken_models[name]))


# ------------------------------------------------------------------------------------------------- 16-bit images
def test_sixteen_bit_grayscale_is_mapped_not_clipped(high_bit_depth_png):
    from internvl.media.image import open_image

    path, arr = high_bit_depth_png
    assert Image.open(path).mode.startswith("I;16")
    rgb = np.asarray(open_image(str(path)))
    assert rgb.shape == (48, 64, 3) and (rgb[..., 0] == rgb[..., 1]).all()
    gray = rgb[..., 0].astype(int)
    assert gray.min() == 0 and gray.max() == 255
    assert (gray == 255).mean() < 0.01  # PIL's convert("RGB") makes 99%+ of these pixels 255
    expected = np.rint((arr.astype(float) - arr.min()) * 255 / (arr.max() - arr.min()))
    assert np.abs(gray - expected).max() <= 1


def test_inference_misspelt_media_kind_is_one_error_line(corpus, tiny_model_dir, capsys):
    main = _script("inference_v2.py").main
    code = main(["--model", str(tiny_model_dir), "--media", "imgae=x.png", "--question", "?", "--no-stream",
                 "--device", "cpu"])
    assert code == EXIT_BAD_INPUT
    _one_error_line(capsys.readouterr().err, "no media reader for 'imgae'")


def test_universal_checkpoint_loading_needs_trust():
    from internvl.errors import ConfigError
    from internvl.train.safe_resume import use_weights_only_deepspeed_loads

    with pytest.raises(ConfigError, match="load_universal"):
        use_weights_only_deepspeed_loads(False, {"checkpoint": {"load_universal": True}})


def test_deepspeed_files_load_weights_only(tmp_path):
    """A DeepSpeed-style file with the loss scaler loads; one whose pickle would run code is refused, naming it."""
    import os

    from deepspeed.runtime.fp16.loss_scaler import LossScaler

    from internvl.model.checkpoint import CheckpointError
    from internvl.train.safe_resume import load_weights_only

    good = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"loss_scaler": LossScaler(1.0), "step": 3}}, good)
    assert load_weights_only(str(good))["optimizer_state_dict"]["step"] == 3
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": Evil()}, evil)
    with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt: refused to unpickle"):
        load_weights_only(str(evil))
    assert not marker.exists()
