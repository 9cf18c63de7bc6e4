"""check_data: validates every row, summarises per dataset, lists bad rows with file:line, exits non-zero."""
import os
import re
import subprocess
import sys

from core_data_helpers import bad_rows, qa, write_image, write_jsonl, write_meta

from internvl.tools.check_data import main


def _meta(tmp_path, rows, extra=None):
    write_jsonl(tmp_path / "good.jsonl", [qa("Hello?", "Hi."), qa("<image>\nQ", image="ok.png"),
                                         qa("<image>\n<image>\nQ", image=["ok.png", "ok.png"])])
    write_jsonl(tmp_path / "bad.jsonl", rows)
    entries = {"good": {"root": str(tmp_path / "img"), "annotation": "good.jsonl"},
               "mixed": {"root": str(tmp_path / "img"), "annotation": "bad.jsonl", "repeat_time": 3}}
    entries.update(extra or {})
    return write_meta(tmp_path / "meta.json", entries)


def test_every_bad_case_is_reported(tmp_path, tiny_model_dir, capsys):
    cases = bad_rows(tmp_path)
    meta = _meta(tmp_path, [qa("fine")] + [row for row, _ in cases],
                 {"gone": {"root": ".", "annotation": "absent.jsonl"}})
    code = main([str(meta), "--model", str(tiny_model_dir), "--max_seq_length", "200", "--no_progress",
                 "--show", "50"])
    out = capsys.readouterr().out
    assert code == 1
    table = {line.split()[0]: line for line in out.splitlines() if line.split()[:1] in (["good"], ["mixed"], ["gone"])}
    assert re.match(r"good\s+3\s+3\s+0\s+-\s+0\s+\d+/[\d.]+/\d+\s+10\b", table["good"])  # 4 tiles + 2 x 3 (shared budget)
    n_bad = len(cases)
    assert re.match(rf"mixed\s+{n_bad + 1}\s+1\s+{n_bad}\s", table["mixed"])  # every line once, no repeat_time
    for reason in {r for _, r in cases}:
        count = sum(1 for _, r in cases if r == reason)
        assert f"{reason}={count}" in table["mixed"]
    assert "missing_annotation=1" in table["gone"]
    for i, (_, reason) in enumerate(cases, start=2):
        assert f"{tmp_path / 'bad.jsonl'}:{i} [{reason}]" in out
    assert "absent.jsonl" in out


def test_all_good_exits_zero_and_template_mismatch_exits_two(tmp_path, tiny_model_dir, capsys):
    write_image(tmp_path / "img" / "ok.png", (300, 100))
    meta = _meta(tmp_path, [qa("fine"), qa("<image>\nQ", "A", image="ok.png")])
    assert main([str(meta), "--model", str(tiny_model_dir), "--no_progress"]) == 0
    assert "all 5 rows OK" in capsys.readouterr().out
    assert main([str(meta), "--model", str(tiny_model_dir), "--no_progress", "--template", "phi3-chat"]) == 2
    assert "phi3-chat" in capsys.readouterr().err
    bad_meta = write_meta(tmp_path / "badmeta.json", {"x": {"root": ".", "annotation": "a.json"}})
    assert main([str(bad_meta), "--model", str(tiny_model_dir)]) == 2
    assert "must be a .jsonl" in capsys.readouterr().err
    # tiling options reach the reader: without dynamic tiling each image is one item
    main([str(meta), "--model", str(tiny_model_dir), "--no_progress", "--no-dynamic_image_size"])
    assert re.search(r"good\s+3\s+3\s+0\s+-\s+0\s+\S+\s+3\b", capsys.readouterr().out)


def test_module_entry_point(tmp_path, tiny_model_dir):
    write_jsonl(tmp_path / "a.jsonl", [qa("Q?"), '{"bad'])
    meta = write_meta(tmp_path / "m.json", {"a": {"root": str(tmp_path), "annotation": "a.jsonl"}})
    env = dict(os.environ, INTERNVL_NO_PLUGINS="1")
    proc = subprocess.run([sys.executable, "-m", "internvl.tools.check_data", str(meta), "--model",
                           str(tiny_model_dir)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"{tmp_path / 'a.jsonl'}:2 [malformed_json]" in proc.stdout
    assert "check a" in proc.stderr  # tqdm progress
