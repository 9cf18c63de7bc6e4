"""``check_data`` checks plugin data before any checkpoint with that encoder exists: the finetune's vision flags."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from internvl.tools.check_data import main


def _write(tmp_path: Path, rows: list[dict], root: Path) -> Path:
    ann = tmp_path / "rows.jsonl"
    ann.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"d": {"root": str(root), "annotation": str(ann)}}))
    return meta


def _qa(key, ref, q="<image>\nIs there a bleed?", a="no"):
    return {key: ref, "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}


def test_volume_tower_flag_accepts_ct5n_and_names_the_gapped_ct2_folder(tmp_path, tiny_model_dir, dicom_dirs,
                                                                         capsys):
    rows = [_qa("volume", {"path": "98892001/CT5N", "modality": "ct", "ct_windows": ["brain"]}),
            _qa("volume", {"path": "77654033/CT2", "modality": "ct", "ct_windows": ["brain"]})]
    meta = _write(tmp_path, rows, dicom_dirs)
    code = main([str(meta), "--model", str(tiny_model_dir), "--no_progress", "--plugins", "patches.neuro",
                 "--vision_model", "volume=brain3d_vit_tiny", "--projector", "volume=spatial_pool_mlp"])
    out = capsys.readouterr().out
    assert code == 1, out
    bad = [ln for ln in out.splitlines() if ln.startswith(str(tmp_path / "rows.jsonl"))]
    assert len(bad) == 1 and bad[0].startswith(f"{tmp_path / 'rows.jsonl'}:2 [unreadable_media]"), out
    assert "CT2" in bad[0] and "Traceback" not in out


def test_without_a_volume_tower_the_row_is_one_named_line(tmp_path, tiny_model_dir, dicom_dirs, capsys):
    meta = _write(tmp_path, [_qa("volume", {"path": "98892001/CT5N", "modality": "ct"})], dicom_dirs)
    code = main([str(meta), "--model", str(tiny_model_dir), "--no_progress", "--plugins", "patches.neuro"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"{tmp_path / 'rows.jsonl'}:1 [incompatible_kind] row has 'volume' media but no vision encoder" in out


def test_brainfound_rows_before_any_checkpoint(tmp_path, tiny_model_dir, capsys):
    scans = tmp_path / "扫描 data"
    scans.mkdir()
    rng = np.random.default_rng(0)
    for name in ("patient_é1.npz", "patient_ü2.npz"):
        np.savez(scans / name, data=rng.integers(-100, 100, (12, 48, 48)).astype(np.int16))
    rows = [{"meditk": "patient_é1.npz", "conversations": [
                {"from": "human", "value": "<meditk>\nDescribe the findings."}, {"from": "gpt", "value": "Normal."},
                {"from": "human", "value": "Any haemorrhage?"}, {"from": "gpt", "value": "No."}]},
            {"meditk": ["patient_é1.npz", "patient_ü2.npz"], "conversations": [
                {"from": "human", "value": "<meditk> then <meditk>: changed?"}, {"from": "gpt", "value": "No."}]}]
    meta = _write(tmp_path, rows, scans)
    code = main([str(meta), "--model", str(tiny_model_dir), "--no_progress", "--plugins", "patches.brainfound",
                 "--vision_model", "brainfound_unet", "--vision_overrides", '{"preset": "tiny"}',
                 "--projector", "mlp"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "all 2 rows OK" in out


@pytest.mark.parametrize("flags,message", [
    (["--vision_model", "volume=no_such_encoder"], "unknown vision model 'no_such_encoder'"),
    (["--vision_overrides", "{not json"], "--vision_overrides"),
])
def test_bad_flags_are_one_error_line(tmp_path, tiny_model_dir, capsys, flags, message):
    meta = _write(tmp_path, [_qa("image", "a.png")], tmp_path)
    code = main([str(meta), "--model", str(tiny_model_dir), "--no_progress", *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_unknown_meta_key_is_an_error_naming_key_and_file(tmp_path, tiny_model_dir, capsys):
    meta = tmp_path / "meta.json"
    (tmp_path / "a.jsonl").write_text(json.dumps(_qa("image", "a.png")) + "\n")
    meta.write_text(json.dumps({"d": {"root": str(tmp_path), "annotation": "a.jsonl", "max_dynamic_patchh": 4}}))
    code = main([str(meta), "--model", str(tiny_model_dir), "--no_progress"])
    err = capsys.readouterr().err
    assert code == 2 and f"{meta} [d]: unknown key(s) ['max_dynamic_patchh']" in err
