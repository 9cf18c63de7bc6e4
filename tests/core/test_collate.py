"""Collation: pad id (not 0), -100 labels, mask 0 on pads only, items grouped by kind with their prompt order."""
import pytest
import torch
from torch.utils.data import DataLoader

from core_data_helpers import qa, write_image, write_jsonl, write_meta
from internvl.data.collate import DataCollator, collate, stack_items
from internvl.train.dataset import build_datasets


def _sample(ids, items, kinds, ref="f.jsonl:1"):
    ids = torch.tensor(ids)
    return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids),
            "position_ids": torch.arange(len(ids)), "pixel_values": items, "item_kinds": kinds, "sample_ref": ref}


def test_padding_uses_pad_id_and_never_masks_real_tokens():
    a = _sample([5, 0, 6, 7], [torch.ones(3, 4, 4)], ["image"])  # id 0 is a real token here
    b = _sample([8, 9], [torch.zeros(3, 4, 4), torch.full((5, 8), 2.0)], ["image", "volume"])
    batch = collate([a, b], pad_token_id=7)
    assert batch["input_ids"].tolist() == [[5, 0, 6, 7], [8, 9, 7, 7]]
    assert batch["labels"].tolist() == [[5, 0, 6, 7], [8, 9, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]  # a's trailing 7 and 0 are real
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3], [0, 1, 0, 0]]
    images, volumes = batch["pixel_values"]["image"], batch["pixel_values"]["volume"]
    assert isinstance(images, torch.Tensor) and images.shape == (2, 3, 4, 4) and volumes.shape == (1, 5, 8)
    assert images[:, 0, 0, 0].tolist() == [1.0, 0.0]  # sample 0's item first
    assert batch["item_kinds"] == ["image", "image", "volume"]
    assert "sample_refs" not in batch
    left = DataCollator(7, padding_side="left", pad_to_multiple_of=8, return_refs=True)([a, b])
    assert left["input_ids"][1].tolist() == [7] * 6 + [8, 9] and left["attention_mask"][1].sum() == 2
    assert left["sample_refs"] == ["f.jsonl:1", "f.jsonl:1"]


def test_mixed_item_shapes_stay_a_list():
    items = [torch.zeros(3, 4, 4), torch.zeros(5, 8)]
    assert isinstance(stack_items(items), list) and len(stack_items(items)) == 2
    batch = collate([_sample([1], items[:1], ["x"]), _sample([2], items[1:], ["x"])], pad_token_id=0)
    assert isinstance(batch["pixel_values"]["x"], list) and batch["pixel_values"]["x"][1].shape == (5, 8)


def test_collator_errors():
    with pytest.raises(ValueError, match="no pad token"):
        DataCollator(None)
    with pytest.raises(ValueError, match="is None"):
        collate([None], pad_token_id=0)
    with pytest.raises(ValueError, match="item_kinds"):
        collate([_sample([1], [torch.zeros(2)], ["image", "image"])], pad_token_id=0)


def test_dataloader_batches_with_tokenizer_pad_id(tmp_path, tok, chat_config):
    write_image(tmp_path / "img" / "a.png", (300, 100))
    write_jsonl(tmp_path / "ann.jsonl", [qa("Only text here, a longer question?"), qa("<image>\nQ", image="a.png"),
                                         qa("Short?"), qa("Other?")])
    meta = write_meta(tmp_path / "meta.json", {"d": {"root": str(tmp_path / "img"), "annotation": "ann.jsonl"}})
    ds = build_datasets(str(meta), tok, chat_config, data_options={"dynamic_image_size": True,
                                                                   "use_thumbnail": True, "max_dynamic_patch": 4})
    collator = DataCollator.from_tokenizer(tok)
    assert collator.pad_token_id == tok.pad_token_id
    first, second = list(DataLoader(ds, batch_size=2, collate_fn=collator))
    size = chat_config.image_size
    # text + image: no item for the text row (the model runs dummies itself), 3x1 tiles + thumbnail, stacked
    assert first["pixel_values"]["image"].shape == (4, 3, size, size) and first["item_kinds"] == ["image"] * 4
    ctx = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert (first["input_ids"] == ctx).sum().item() == 4 * chat_config.num_image_token
    # a batch without media carries none
    assert second["pixel_values"] == {} and second["item_kinds"] == []
    for batch, (i, j) in ((first, (0, 1)), (second, (2, 3))):
        lengths = [ds[i]["input_ids"].numel(), ds[j]["input_ids"].numel()]
        for row, n in enumerate(lengths):
            assert batch["attention_mask"][row].sum().item() == n
            assert (batch["input_ids"][row, n:] == tok.pad_token_id).all()
            assert (batch["labels"][row, n:] == -100).all()
