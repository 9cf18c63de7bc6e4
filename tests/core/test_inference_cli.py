"""inference_v2.py: one streamed answer, JSONL batch mode, and one clear error line for bad input."""
import json
import subprocess
import sys

import pytest
from PIL import Image


def run(repo_root, *args):
    return subprocess.run([sys.executable, str(repo_root / "inference_v2.py"), *map(str, args)], cwd=repo_root,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (96, 80), (220, 20, 20)).save(path)
    return path


def test_single_question_prints_an_answer(repo_root, tiny_model_dir, png):
    res = run(repo_root, "--model", tiny_model_dir, "--image", png, "--question", "Which colour is the shape?",
              "--max-new-tokens", "5")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip()


def test_jsonl_batch_one_answer_per_line(repo_root, tiny_model_dir, png, tmp_path):
    rows = [{"id": "a", "image": str(png), "question": "Which colour is the shape?"},
            {"id": "b", "question": "Hello"}]
    src = tmp_path / "q.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run(repo_root, "--model", tiny_model_dir, "--jsonl", src, "--max-new-tokens", "4")
    assert res.returncode == 0, res.stderr[-2000:]
    answers = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert [a["id"] for a in answers] == ["a", "b"] and all(isinstance(a["answer"], str) for a in answers)


def test_missing_image_is_one_error_line_naming_the_file(repo_root, tiny_model_dir, tmp_path):
    missing = tmp_path / "nope.png"
    res = run(repo_root, "--model", tiny_model_dir, "--image", missing, "--question", "Hi")
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(missing) in errors[0]


def test_unreadable_image_and_placeholder_mismatch(repo_root, tiny_model_dir, png, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    res = run(repo_root, "--model", tiny_model_dir, "--image", bad, "--question", "Hi")
    assert res.returncode == 2 and str(bad) in res.stderr
    res = run(repo_root, "--model", tiny_model_dir, "--image", png, "--question", "<image>\n<image>\nCompare")
    assert res.returncode == 2 and "placeholder" in res.stderr


def test_unmappable_checkpoint(repo_root, tmp_path, png):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "blip-2"}))
    res = run(repo_root, "--model", tmp_path, "--image", png, "--question", "Hi")
    assert res.returncode == 2 and "config.json" in res.stderr and "blip-2" in res.stderr
