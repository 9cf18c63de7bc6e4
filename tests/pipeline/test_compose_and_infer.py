"""``compose_towers`` adds a volume tower to the tiny image model; ``inference_v2.py --image A --media volume=B`` then
feeds both towers in one prompt; the demo data builder of the mixed-modality demo."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_tower_dir(tiny_model_dir, tmp_path_factory):
    from internvl.tools.compose_towers import main

    out = tmp_path_factory.mktemp("composed") / "image_volume"
    assert main([str(tiny_model_dir), str(out), "--plugins", "patches.neuro",
                 "--vision_model", "volume=brain3d_vit_tiny", "--projector", "volume=spatial_pool_mlp",
                 "--projector_config", 'volume={"pool": 2}']) == 0
    return out


def test_composed_checkpoint_keeps_the_image_tower(tiny_model_dir, two_tower_dir):
    from internvl.model.checkpoint import read_weights

    before, after = read_weights(str(tiny_model_dir)), read_weights(str(two_tower_dir))
    for key, value in before.items():  # image tower and LLM unchanged, byte for byte
        assert key in after and after[key].equal(value), key
    assert any(k.startswith("vision_towers.volume.vision_model.") for k in after)
    config = json.loads((two_tower_dir / "config.json").read_text())
    assert config["vision_towers"]["volume"]["projector"] == "spatial_pool_mlp"
    assert (two_tower_dir / "tokenizer.json").is_file()


def _inference_main():
    import importlib.util

    spec = importlib.util.spec_from_file_location("inference_v2", REPO / "inference_v2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_inference_feeds_an_image_and_a_volume(two_tower_dir, tmp_path, monkeypatch, capsys):
    from internvl.model.internvl_chat import InternVLChatModel
    from patches.neuro.synthetic import phantom, save_nifti

    Image.new("RGB", (112, 112), (200, 30, 30)).save(tmp_path / "a.png")
    save_nifti(phantom((30, 32, 28), lesion="left", seed=3), str(tmp_path / "b.nii.gz"), spacing=(1.0, 1.0, 1.0))
    calls = []
    original = InternVLChatModel.generate_text

    def spy(self, tokenizer, prompts, gen, pixel_values=None, item_kinds=None):
        calls.append((sorted(pixel_values), list(item_kinds)))
        return original(self, tokenizer, prompts, gen, pixel_values=pixel_values, item_kinds=item_kinds)

    monkeypatch.setattr(InternVLChatModel, "generate_text", spy)
    main = _inference_main()
    code = main(["--model", str(two_tower_dir), "--image", str(tmp_path / "a.png"), "--media",
                 f"volume={tmp_path / 'b.nii.gz'}", "--question", "Same side?", "--max-new-tokens", "3",
                 "--no-stream", "--device", "cpu"])
    assert code == 0
    assert calls == [(["image", "volume"], ["image"] * (len(calls[0][1]) - 1) + ["volume"])]
    capsys.readouterr()
    code = main(["--model", str(two_tower_dir), "--media", f"volume={tmp_path / 'nope.nii.gz'}", "--question", "?",
                 "--no-stream", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "nope.nii.gz" in err and err.count("\n") == 1


def test_mixed_demo_data_needs_both_inputs(tmp_path):
    from patches.neuro.demo_mixed import CLASSES, build

    out = build(str(tmp_path / "mixed"), n_train=8, n_test=4)
    rows = [json.loads(ln) for ln in (Path(out) / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and sorted(r["conversations"][1]["value"] for r in rows) == sorted(CLASSES * 2)
    assert all(list(r)[:2] == ["id", "image"] and "volume" in r for r in rows)
    assert build(str(tmp_path / "mixed"), n_train=8, n_test=4) == out  # identical build kept
