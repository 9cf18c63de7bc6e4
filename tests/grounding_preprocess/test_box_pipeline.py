"""Rows with ``boxes`` through the real pipeline: ``RowProcessor.training_sample`` / ``prompt_inputs`` write the
placed 0-1000 tokens into the text before tokenisation; bad boxes are ``DataError``s naming ``file:line`` with
their reason, and ``--skip_bad_samples`` counts them under its budget."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from internvl.constants import IGNORE_INDEX
from internvl.data.processor import RowProcessor
from internvl.errors import BOX_OUT_OF_VIEW, BOXES_UNSUPPORTED, MALFORMED_BOX, DataError, SkipBudgetExceeded
from tests.grounding_preprocess.conftest import ORIGIN, SPACING, lesion_volume, world_box

LLM = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=32, intermediate_size=64,
           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
           tie_word_embeddings=False)
# the lesion volume at 1 mm: 30x39x44 (W, H, D) -> crop/pad to 32^3: W +1, H -3, D -6 (see test_volume_boxes)
VOLUME_TOKENS = "[[594, 281, 188, 781, 516, 500]]"  # x 19..25/32, y 9..16.5/32, z 6..16/32, by hand
IMAGE_TOKENS = "[[200, 250, 500, 750]]"             # pixel box (40, 20, 100, 60) on a 200x80 image


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def config(tok):
    from internvl.model.internvl_chat import InternVLChatConfig

    towers = {"volume": ("brain3d_vit_tiny", {"preprocess": {"target_spacing": [1.0, 1.0, 1.0],
                                                            "volume_shape": [32, 32, 32]}}, "spatial_pool_mlp",
                         {"pool": 2})}
    return InternVLChatConfig.build(
        vision_overrides=dict(image_size=28, patch_size=14, hidden_size=16, num_hidden_layers=1,
                              num_attention_heads=2, intermediate_size=32),
        llm_config=dict(LLM, vocab_size=len(tok)), template="internvl2_5", force_image_size=28,
        dynamic_image_size=True, use_thumbnail=True, max_dynamic_patch=3, towers=towers)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from patches.neuro.synthetic import save_nifti

    root = tmp_path_factory.mktemp("rows")
    save_nifti(lesion_volume(), str(root / "lesion.nii.gz"), spacing=SPACING, axcodes="PSR", origin=ORIGIN)
    Image.new("RGB", (200, 80), (30, 30, 30)).save(root / "wide.png")
    return root


def _row(media: dict, boxes, answer="<ref>lesion</ref><box>lesion</box>"):
    return {**media, "boxes": boxes, "conversations": [
        {"from": "human", "value": "<image>\nWhere is the lesion?"}, {"from": "gpt", "value": answer}]}


GOOD = {
    "volume": _row({"volume": "lesion.nii.gz"}, {"lesion": {"space": "world", "coords": [world_box()]}}),
    "image": _row({"image": "wide.png"}, {"lesion": {"space": "pixel", "coords": [[40, 20, 100, 60]]}}),
}
BAD = {  # name -> (row, reason)
    "image out of view": (_row({"image": "wide.png"}, {"lesion": {"space": "pixel", "coords": [[150, 20, 260, 60]]}}),
                          BOX_OUT_OF_VIEW),
    "volume out of view": (_row({"volume": "lesion.nii.gz"},
                                {"lesion": {"space": "world", "coords": [[40.0, 0.0, 0.0, 60.0, 5.0, 5.0]]}}),
                           BOX_OUT_OF_VIEW),
    "3 numbers": (_row({"image": "wide.png"}, {"lesion": {"space": "pixel", "coords": [[1, 2, 3]]}}), MALFORMED_BOX),
    "x1 > x2": (_row({"image": "wide.png"}, {"lesion": {"space": "pixel", "coords": [[50, 2, 30, 9]]}}),
                MALFORMED_BOX),
    "unknown space": (_row({"image": "wide.png"}, {"lesion": {"space": "mm", "coords": [[1, 2, 3, 4]]}}),
                      MALFORMED_BOX),
    "name not an entry": (_row({"image": "wide.png"}, {"lesion": {"space": "pixel", "coords": [[1, 2, 3, 4]]}},
                               answer="<box>tumour</box>"), MALFORMED_BOX),
    "entry never used": (_row({"image": "wide.png"}, {"lesion": {"space": "pixel", "coords": [[1, 2, 3, 4]]}},
                              answer="no box"), MALFORMED_BOX),
    "voxel box on an image": (_row({"image": "wide.png"}, {"lesion": {"space": "voxel",
                                                                      "coords": [[1, 2, 3, 4, 5, 6]]}}),
                              BOXES_UNSUPPORTED),
}


@pytest.mark.parametrize("name,tokens", [("volume", VOLUME_TOKENS), ("image", IMAGE_TOKENS)])
def test_training_sample_and_prompt_carry_placed_tokens(config, tok, root, name, tokens):
    proc = RowProcessor(config, tok)
    sample = proc.training_sample(GOOD[name], "rows.jsonl:1", root=str(root))
    text = tok.decode(sample["input_ids"])
    assert f"<ref>lesion</ref><box>{tokens}</box>" in text
    assert "<box>lesion</box>" not in text
    trained = tok.decode(sample["input_ids"][sample["labels"] != IGNORE_INDEX])
    assert tokens in trained  # the box is in the reply the model learns
    # generation prompt: a question that refers to the box gets the same tokens
    ask = {**GOOD[name], "conversations": [
        {"from": "human", "value": "<image>\nWhat is in <box>lesion</box>?"}, {"from": "gpt", "value": "a lesion"}]}
    prompt = proc.prompt_inputs(ask, "rows.jsonl:2", root=str(root))
    assert f"<box>{tokens}</box>" in prompt.question and tokens in tok.decode(prompt.input_ids)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_boxes_are_named_data_errors(config, tok, root, name):
    row, reason = BAD[name]
    with pytest.raises(DataError) as err:
        RowProcessor(config, tok).training_sample(row, "rows.jsonl:7", root=str(root))
    assert err.value.reason == reason and str(err.value).startswith("rows.jsonl:7: ")


def test_skip_bad_samples_counts_box_errors(config, tok, root):
    from internvl.data.meta import load_meta
    from internvl.train.dataset import SupervisedDataset

    rows = [GOOD["volume"], GOOD["image"]] * 3 + [BAD["image out of view"][0], BAD["volume out of view"][0],
                                                  BAD["3 numbers"][0], BAD["name not an entry"][0]]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "meta.json").write_text(json.dumps({"boxes": {"root": str(root), "annotation": str(root / "rows.jsonl")}}))
    spec = load_meta(str(root / "meta.json"))[0]
    ds = SupervisedDataset(spec, tok, config, max_seq_length=512, skip_bad_samples=0.4)  # budget: 4 of 10 lines
    samples = [ds[i] for i in range(len(ds))]
    assert ds.bad_count == 4
    assert all("<box>[[" in tok.decode(s["input_ids"]) for s in samples)
    strict = SupervisedDataset(spec, tok, config, max_seq_length=512, skip_bad_samples=0.3)  # budget 3: one too many
    with pytest.raises(SkipBudgetExceeded, match="exceed the skip budget"):
        [strict[i] for i in range(len(strict))]
    with pytest.raises(DataError, match=r"rows.jsonl:7: .*\[box_out_of_view\]"):  # no skipping: the first one raises
        SupervisedDataset(spec, tok, config, max_seq_length=512)[6]


def test_evaluation_places_reference_boxes_once(config, tok, root):
    """A test row whose reference names a box: ``testset.place_boxes`` (what ``evaluate`` runs once the model config
    is known) puts the placed tokens in the reference, and the prompt is then built without placing again."""
    from internvl.evaluation.testset import place_boxes, read_samples

    path = root / "eval.jsonl"
    path.write_text(json.dumps(GOOD["image"]) + "\n" + json.dumps(GOOD["volume"]) + "\n")
    samples = read_samples(str(path), task="grounding")
    assert samples[0].reference == "<ref>lesion</ref><box>lesion</box>"
    proc = RowProcessor(config, tok)
    place_boxes(samples, proc)
    assert [s.reference for s in samples] == [f"<ref>lesion</ref><box>{IMAGE_TOKENS}</box>",
                                              f"<ref>lesion</ref><box>{VOLUME_TOKENS}</box>"]
    for s in samples:
        assert "boxes" not in s.row
        proc.prompt_inputs(s.row, s.where, root=s.root)  # no second placement, no "entry never used" error
