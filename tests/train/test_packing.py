"""Packing (``--use_packed_ds``): the same samples packed and unpacked train the same, samples in one pack do not
see each other, packs never split a sample (so never an ``<IMG_CONTEXT>`` run), and the planner keeps the budget.

fp32 on CPU, the tiny model; samples mix image rows (several tiles) and text rows of different lengths.
"""
from __future__ import annotations

import random

import pytest
import torch

from internvl.constants import IMG_CONTEXT_TOKEN
from internvl.data.collate import DataCollator, token_weight
from internvl.data.meta import load_meta
from internvl.model.internvl_chat import InternVLChatModel
from internvl.model.loss import token_losses
from internvl.model.checkpoint import read_tokenizer
from internvl.train.dataset import SupervisedDataset
from internvl.train.packing import PackedDataset, merge_samples, plan_packs
from internvl.train.sampling import TrainDataset
from torch.utils.data import ConcatDataset


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model = InternVLChatModel.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    tokenizer = read_tokenizer(str(tiny_model_dir))
    model.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    model.language_model.set_attn_implementation("internvl_varlen")
    model.language_model.config.use_cache = False  # as the finetune sets it
    model.train()
    return model, tokenizer


@pytest.fixture(scope="module")
def mixed_dataset(tiny, text_image_meta):
    model, tokenizer = tiny
    spec = load_meta(str(text_image_meta))[0]
    return SupervisedDataset(spec, tokenizer, model.config, is_train=False)


def _samples(ds, lines):
    return [ds.build(line) for line in lines]


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _run(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    return out, _grads(model)


def _per_sample_losses(logits, labels, bounds):
    """Mean CE of each sample: ``bounds`` are (row, start, end) of each sample in the batch."""
    out = []
    for row, a, b in bounds:
        ce = token_losses(logits[row:row + 1, a:b], labels[row:row + 1, a:b])[0]
        mask = labels[row, a + 1:b] != -100
        out.append(float(ce[mask].sum() / mask.sum()))
    return out


@pytest.mark.parametrize("reduction", ["token", "sample", "square"])
def test_packed_and_unpacked_give_the_same_losses_and_gradients(tiny, mixed_dataset, reduction):
    model, tokenizer = tiny
    samples = _samples(mixed_dataset, [0, 1, 2, 3, 6])  # text, text, image, text, image
    assert sum(len(s["pixel_values"]) for s in samples) >= 2
    unpacked = DataCollator.from_tokenizer(tokenizer, loss_reduction=reduction)(samples)
    packed = DataCollator.from_tokenizer(tokenizer, packed=True, loss_reduction=reduction)([merge_samples(samples)])
    assert packed["input_ids"].shape[0] == 1 and int(packed["attention_mask"].sum()) == packed["input_ids"].numel()
    assert int(unpacked["attention_mask"].sum()) == packed["input_ids"].numel()  # same real tokens, no padding

    out_u, grads_u = _run(model, unpacked)
    out_p, grads_p = _run(model, packed)
    assert float(out_p.loss.detach()) == pytest.approx(float(out_u.loss.detach()), abs=1e-5)
    assert set(grads_u) == set(grads_p) and grads_u
    for name in grads_u:
        torch.testing.assert_close(grads_p[name], grads_u[name], atol=1e-5, rtol=1e-4, msg=name)

    lens = [len(s["input_ids"]) for s in samples]
    starts = [sum(lens[:i]) for i in range(len(lens))]
    per_u = _per_sample_losses(out_u.logits, unpacked["labels"], [(i, 0, n) for i, n in enumerate(lens)])
    per_p = _per_sample_losses(out_p.logits, packed["labels"], [(0, a, a + n) for a, n in zip(starts, lens)])
    assert per_p == pytest.approx(per_u, abs=1e-5)

    # the loss is what the reduction says: weighted mean of the per-sample means
    counts = [int((s["labels"][1:] != -100).sum()) for s in samples]
    weights = [token_weight(n, reduction) * n for n in counts]
    expected = sum(w * m for w, m in zip(weights, per_u)) / sum(weights)
    assert float(out_u.loss.detach()) == pytest.approx(expected, abs=1e-5)


def test_dense_fallback_matches_the_varlen_path(tiny, mixed_dataset):
    model, tokenizer = tiny
    samples = _samples(mixed_dataset, [0, 2, 3])
    packed = DataCollator.from_tokenizer(tokenizer, packed=True)([merge_samples(samples)])
    with torch.no_grad():
        varlen = model(**packed).logits
        model.language_model.set_attn_implementation("sdpa")  # transformers' block-diagonal mask from position ids
        try:
            dense = model(**packed).logits  # sdpa ignores cu_seq_lens
        finally:
            model.language_model.set_attn_implementation("internvl_varlen")
    torch.testing.assert_close(varlen, dense, atol=1e-5, rtol=1e-4)


def test_a_sample_does_not_see_its_pack_neighbours(tiny, mixed_dataset):
    model, tokenizer = tiny
    samples = _samples(mixed_dataset, [0, 2, 3])
    collate = DataCollator.from_tokenizer(tokenizer, packed=True)
    changed = [dict(s) for s in samples]
    ids = changed[0]["input_ids"].clone()
    ids[1:-1] = torch.randint(10, 100, (len(ids) - 2,))  # rewrite the first sample's text tokens
    changed[0]["input_ids"] = ids
    with torch.no_grad():
        a = model(**collate([merge_samples(samples)])).logits[0]
        b = model(**collate([merge_samples(changed)])).logits[0]
    n0 = len(ids)
    assert not torch.allclose(a[:n0], b[:n0])  # the changed sample itself did change
    torch.testing.assert_close(a[n0:], b[n0:], atol=1e-6, rtol=0)  # its neighbours did not


def test_plan_keeps_budgets_and_places_every_sample_once():
    rng = random.Random(0)
    for trial in range(200):
        budget, max_items = rng.randint(50, 400), rng.randint(1, 8)
        sizes = [(rng.randint(1, budget), rng.randint(0, max_items)) for _ in range(rng.randint(1, 60))]
        packs = plan_packs(sizes, budget, max_items)
        assert sorted(i for p in packs for i in p) == list(range(len(sizes))), trial
        for p in packs:
            assert sum(sizes[i][0] for i in p) <= budget and sum(sizes[i][1] for i in p) <= max_items
        assert plan_packs(sizes, budget, max_items) == packs  # deterministic
    with pytest.raises(ValueError, match="does not fit"):
        plan_packs([(10, 0), (11, 0)], 10, 1)


def test_packs_never_split_an_image_token_run(tiny, mixed_dataset):
    """Property test over random budgets: every sample of every pack is whole, its ``<IMG_CONTEXT>`` runs match its
    items, and the planned sizes are the built sizes."""
    model, tokenizer = tiny
    train = TrainDataset(ConcatDataset([mixed_dataset]))
    ctx = model.img_context_token_id
    per_item = model.config.num_context_tokens(mixed_dataset.build(2)["pixel_values"][0])
    rng = random.Random(1)
    longest = max(mixed_dataset.sample_size(line)[0] for line in range(12))
    for _ in range(4):
        packed = PackedDataset(train, max_packed_tokens=rng.randint(longest, 4 * longest),
                               num_images_expected=rng.randint(8, 30))
        for p in rng.sample(range(len(packed)), min(3, len(packed))):
            pack = packed[p]
            ids = pack["input_ids"]
            assert len(ids) <= packed.max_packed_tokens and len(pack["pixel_values"]) <= packed.num_images_expected
            start = 0
            for n, i in zip(pack["seq_lens"], packed.packs[p]):
                seg = ids[start:start + n]
                assert (n, None) == (packed.sizes[i][0], None)
                n_ctx = int((seg == ctx).sum())
                assert n_ctx % per_item == 0 and pack["position_ids"][start] == 0
                if n_ctx:  # one contiguous run per image, wholly inside this sample
                    where = (seg == ctx).nonzero().flatten()
                    assert int(where[-1] - where[0]) + 1 == n_ctx
                start += n
            assert start == len(ids)
            n_items = sum(packed.sizes[i][1] for i in packed.packs[p])
            assert len(pack["pixel_values"]) == n_items
