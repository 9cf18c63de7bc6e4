"""One row -> tokens path for training, evaluation and chat, over rows of every media kind; several vision towers in
one model (save/load, logits); the core's import direction."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from internvl.constants import IGNORE_INDEX
from internvl.data.processor import RowProcessor
from internvl.evaluation.runner import generate_predictions, generation_config
from internvl.evaluation.testset import read_samples
from internvl.model.internvl_chat import InternVLChatConfig, InternVLChatModel

REPO = Path(__file__).resolve().parents[2]
LLM = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_size=32, intermediate_size=64,
           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
           tie_word_embeddings=False)
TOWERS = {"volume": ("brain3d_vit_tiny", {"preprocess": {"target_spacing": [2.0, 2.0, 2.0]}}, "spatial_pool_mlp",
                     {"pool": 2}),
          "fmri": ("brain3d_vit_4d_tiny", {}, "mlp", {}),
          "features": ("slide_features", {"feature_dim": 16, "tile_encoder": None}, "abmil",
                       {"num_tokens": 3, "dim": 16, "heads": 2}),
          "meditk": ("brainfound_unet", {"preset": "tiny"}, "mlp", {})}


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tok):
    config = InternVLChatConfig.build(
        vision_overrides=dict(image_size=28, patch_size=14, hidden_size=16, num_hidden_layers=1,
                              num_attention_heads=2, intermediate_size=32),
        llm_config=dict(LLM, vocab_size=len(tok)), template="internvl2_5", force_image_size=28,
        dynamic_image_size=True, use_thumbnail=True, max_dynamic_patch=3, towers=TOWERS)
    torch.manual_seed(0)
    m = InternVLChatModel(config).eval()
    m.img_context_token_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    return m


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """One file per kind, written with the libraries the readers use."""
    import h5py
    import nibabel as nib

    from patches.neuro.synthetic import phantom, save_nifti

    root = tmp_path_factory.mktemp("media")
    Image.new("RGB", (60, 30), (200, 20, 20)).save(root / "wide.png")
    save_nifti(phantom((20, 22, 18), lesion="left", seed=1), str(root / "t1.nii.gz"), spacing=(2.0, 2.0, 2.0),
               axcodes="LPI")
    run = np.random.default_rng(0).normal(100, 5, (16, 16, 16, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(run, np.diag([2.0, 2.0, 2.0, 1.0])), str(root / "rest.nii.gz"))
    with h5py.File(root / "slide.h5", "w") as f:
        f["features"] = np.random.default_rng(1).normal(size=(7, 16)).astype(np.float32)
        f["coords"] = np.arange(14).reshape(7, 2)
    np.savez(root / "scän 頭部.npz", data=np.random.default_rng(2).integers(-50, 80, (10, 40, 40)).astype(np.int16))
    return root


def _turns(*texts):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


ROWS = {
    "text": {"conversations": _turns("Hello?", "Hi there.")},
    "image": {"image": "wide.png", "conversations": _turns("What colour?", "red")},
    "volume": {"volume": "t1.nii.gz", "conversations": _turns("<image>\nLesion?", "yes")},
    "fmri": {"fmri": "rest.nii.gz", "conversations": _turns("<image>\nResting state?", "yes")},
    "features": {"features": "slide.h5", "conversations": _turns("Grade?", "2")},
    "meditk_multiturn": {"meditk": "scän 頭部.npz",
                         "conversations": _turns("<meditk>\nFindings?", "none", "Any bleed?", "no")},
    "image_and_volume": {"image": "wide.png", "volume": "t1.nii.gz",
                         "conversations": [{"from": "system", "value": "Be brief."}]
                         + _turns("Photo <image> and scan <image>: same side?", "yes")},
}


@pytest.mark.parametrize("name", sorted(ROWS))
def test_training_evaluation_and_chat_tokens_agree(name, model, tok, media, tmp_path):
    row = ROWS[name]
    proc = RowProcessor(model.config, tok)
    train = proc.training_sample(row, f"{name}:1", root=str(media))
    # evaluation: the runner's own path (a JSONL row -> generate_predictions -> model.generate_text)
    (tmp_path / "t.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    seen = {}

    def capture(tokenizer, prompts, gen, pixel_values=None, item_kinds=None):
        seen["prompt"], seen["kinds"] = prompts[0], item_kinds
        return ["x"] * len(prompts)

    model.generate_text = capture
    try:
        samples = read_samples(str(tmp_path / "t.jsonl"), root=str(media))
        generate_predictions(model, tok, samples, proc, generation_config(2), progress=False)
    finally:
        del model.generate_text
    prompt = seen["prompt"]
    ids = train["input_ids"].tolist()
    assert ids[:len(prompt)] == prompt  # the generation prompt is the training prompt up to the reply
    first_label = next(i for i, v in enumerate(train["labels"].tolist()) if v != IGNORE_INDEX)
    assert train["labels"][len(prompt):].ne(IGNORE_INDEX).any()  # the reply after the prompt is trained
    if "conversations" in row and len(row["conversations"]) <= 3:
        assert first_label == len(prompt)  # single turn: the reply starts right after the prompt
    assert (seen["kinds"] or []) == train["item_kinds"]
    ctx = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert prompt.count(ctx) == sum(model.config.num_context_tokens(it, k)
                                    for it, k in zip(train["pixel_values"], train["item_kinds"]))
    # chat (InternVL's signature, image tower): the same prompt for the image row
    if name == "image":
        items = torch.stack(train["pixel_values"])
        model.generate_text = capture
        try:
            model.chat(tok, items, "What colour?", dict(max_new_tokens=2))
        finally:
            del model.generate_text
        assert seen["prompt"] == prompt


def test_mixed_row_trains_through_both_towers(model, tok, media):
    from internvl.data.collate import DataCollator

    proc = RowProcessor(model.config, tok)
    rows = [ROWS["image_and_volume"], ROWS["text"], ROWS["features"]]
    batch = DataCollator.from_tokenizer(tok)([proc.training_sample(r, f"r:{i}", root=str(media))
                                              for i, r in enumerate(rows)])
    assert set(batch["pixel_values"]) == {"image", "volume", "features"}
    model.train()
    try:
        out = model(**batch)
        out.loss.backward()
    finally:
        model.eval()
    grads = {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in model.named_parameters()
             if p.requires_grad}
    for prefix in ("vision_model.", "mlp1.", "vision_towers.volume.", "vision_towers.features.mlp1"):
        assert any(g for n, g in grads.items() if n.startswith(prefix)), prefix
    # towers without an item this step still ran (dummy times zero): their parameters have (zero) gradients
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("vision_towers.fmri."))
    model.zero_grad(set_to_none=True)


def test_two_tower_model_round_trips(model, tok, media, tmp_path):
    proc = RowProcessor(model.config, tok)
    s = proc.training_sample(ROWS["image_and_volume"], "r:1", root=str(media))
    from internvl.data.collate import DataCollator

    batch = DataCollator.from_tokenizer(tok)([s])
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert set(saved["vision_towers"]) == set(TOWERS)
    assert saved["vision_config"]["encoder_name"] == "intern_vit"
    loaded = InternVLChatModel.from_pretrained(tmp_path)
    loaded.img_context_token_id = model.img_context_token_id
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("vision_towers.volume.vision_model.") for k in a)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_a_kind_no_tower_reads_is_a_named_error(tok, tiny_model_dir, media):
    from internvl.errors import DataError

    config = InternVLChatConfig.from_pretrained(tiny_model_dir)
    proc = RowProcessor(config, tok)
    with pytest.raises(DataError, match=r"x.jsonl:3: row has 'volume' media but no vision encoder of this model "
                                        r"reads 'volume' media; it reads \['image'\]") as err:
        proc.training_sample(ROWS["volume"], "x.jsonl:3", root=str(media))
    assert err.value.reason == "incompatible_kind"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


@pytest.mark.parametrize("layer,forbidden", [
    ("model", ("internvl.media", "internvl.data", "internvl.train", "internvl.evaluation", "internvl.tools")),
    ("media", ("internvl.train", "internvl.data", "internvl.evaluation", "internvl.tools")),
    ("data", ("internvl.train", "internvl.evaluation", "internvl.tools")),
    ("evaluation", ("internvl.train",)),
])
def test_core_imports_point_one_way(layer, forbidden):
    pkg = REPO / "internvl_chat" / "internvl" / layer
    bad = [(str(f.relative_to(REPO)), m) for f in sorted(pkg.rglob("*.py")) for m in _imports(f)
           if m.startswith(forbidden)]
    assert not bad, bad
    core = REPO / "internvl_chat" / "internvl"
    assert not [f for f in core.rglob("*.py") if any(m.startswith("patches") for m in _imports(f))]


def test_reserved_image_token_in_a_test_question_is_a_named_error(model, tok):
    from internvl.errors import DataError

    proc = RowProcessor(model.config, tok)
    row = {"conversations": [{"from": "human", "value": "what is <IMG_CONTEXT>?"}, {"from": "gpt", "value": "x"}]}
    with pytest.raises(DataError, match=r"t.jsonl:4: the text contains '<IMG_CONTEXT>'") as err:
        proc.prompt_inputs(row, "t.jsonl:4")
    assert err.value.reason == "reserved_token"


def test_untied_head_is_saved_when_weights_are_partitioned(model, tmp_path):
    """Under ZeRO-3 every partitioned weight is an empty tensor (address 0) when the gathered state is saved: the
    tie test must not mistake an untied lm_head for a tied one and leave it out of the file."""
    from safetensors.torch import load_file

    state = {k: v.clone() for k, v in model.state_dict().items()}
    saved = {n: p.data for n, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.data = torch.empty(0)
        model.save_pretrained(tmp_path, state_dict=state)
    finally:
        for n, p in model.named_parameters():
            p.data = saved[n]
    assert "language_model.lm_head.weight" in load_file(str(tmp_path / "model.safetensors"))
