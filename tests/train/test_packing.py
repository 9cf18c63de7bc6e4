"""Packing (``--use_packed_ds``): the same samples packed and unpacked train the same, samples in one pack do not
see each other, packs never split a sample (so never an ``<IMG_CONTEXT>`` run), and the planner keeps the budget.

fp32 on CPU, the tiny model; samples mix image rows (several tiles) and text rows of different lengths.
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess

import pytest
import torch

from internvl.constants import IMG_CONTEXT_TOKEN
from internvl.data.collate import DataCollator, token_weight
from internvl.data.meta import load_meta
from internvl.errors import DataError
from internvl.model.internvl_chat import InternVLChatModel
from internvl.model.loss import token_losses
from internvl.model.checkpoint import read_tokenizer
from internvl.train.dataset import SupervisedDataset
from internvl.train.packing import PackedDataset, merge_samples, plan_packs
from internvl.train.sampling import TrainDataset
from torch.utils.data import ConcatDataset

from finetune_helpers import REPO, launcher_env, logged_losses, run_launcher


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
        ce = token_losses(logits[row:row + 1, a:b], labels[row:row + 1, a:b])[0, :-1]  # last: no next label
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
    with torch.no_grad():  # a training step returns no logits (its head runs on trained positions only)
        logits_u, logits_p = model(**unpacked).logits, model(**packed).logits
    per_u = _per_sample_losses(logits_u, unpacked["labels"], [(i, 0, n) for i, n in enumerate(lens)])
    per_p = _per_sample_losses(logits_p, packed["labels"], [(0, a, a + n) for a, n in zip(starts, lens)])
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


def test_a_sample_over_the_budget_is_named_or_a_counted_skip(tiny, text_image_meta):
    model, tokenizer = tiny
    spec = load_meta(str(text_image_meta))[0]
    sizes = {line: SupervisedDataset(spec, tokenizer, model.config).sample_size(line)[0] for line in range(8)}
    budget = sorted(sizes.values())[-1] - 1  # the longest of the first rows does not fit
    strict = SupervisedDataset(spec, tokenizer, model.config)
    with pytest.raises(DataError) as err:
        PackedDataset(TrainDataset(ConcatDataset([strict])), max_packed_tokens=budget, num_images_expected=30)
    assert err.value.reason == "too_long" and "mixed.jsonl:" in str(err.value)
    assert "does not fit a pack" in str(err.value)
    lenient = SupervisedDataset(spec, tokenizer, model.config, skip_bad_samples=0.5)
    packed = PackedDataset(TrainDataset(ConcatDataset([lenient])), max_packed_tokens=budget, num_images_expected=30)
    too_long = [i for i in range(len(lenient)) if lenient.sample_size(lenient.line_index[i])[0] > budget]
    assert too_long and lenient.bad_count == len(too_long)
    assert sorted(i for p in packed.packs for i in p) == sorted(set(range(len(lenient))) - set(too_long))


class _Stop(Exception):
    pass


def test_sizing_split_over_ranks_plans_what_one_process_plans(tiny, text_image_meta):
    """Under torch.distributed each rank sizes every world-th sample and the sizes are gathered: every rank then
    plans the packs, counts the skips and raises the first error exactly as one process sizing everything."""
    model, tokenizer = tiny
    spec = load_meta(str(text_image_meta))[0]

    def fresh(skip):
        ds = SupervisedDataset(spec, tokenizer, model.config, skip_bad_samples=skip)
        return ds, TrainDataset(ConcatDataset([ds]))

    probe, _ = fresh(None)
    budget = sorted(probe.sample_size(line)[0] for line in set(probe.line_index))[-5] - 1  # a few do not fit
    one, train = fresh(0.5)
    single = PackedDataset(train, max_packed_tokens=budget, num_images_expected=30)
    assert one.bad_count >= 4
    halves = {}
    for rank in (0, 1):
        def capture(mine, rank=rank):
            halves[rank] = mine
            raise _Stop
        with pytest.raises(_Stop):
            PackedDataset(fresh(0.5)[1], max_packed_tokens=budget, num_images_expected=30, shard=(rank, 2),
                          gather=capture)
    assert set(halves[0]) == set(range(0, len(one), 2)) and set(halves[1]) == set(range(1, len(one), 2))
    for rank in (0, 1):
        ds, train = fresh(0.5)
        packed = PackedDataset(train, max_packed_tokens=budget, num_images_expected=30, shard=(rank, 2),
                               gather=lambda mine: [halves[0], halves[1]])
        assert packed.packs == single.packs and packed.sizes == single.sizes and ds.bad_count == one.bad_count
    with pytest.raises(DataError) as expected:
        PackedDataset(fresh(None)[1], max_packed_tokens=budget, num_images_expected=30)
    for rank in (0, 1):
        with pytest.raises(DataError) as got:
            PackedDataset(fresh(None)[1], max_packed_tokens=budget, num_images_expected=30, shard=(rank, 2),
                          gather=lambda mine: [halves[0], halves[1]])
        assert str(got.value) == str(expected.value) and got.value.reason == "too_long"


def test_a_pack_left_with_no_sample_is_replaced_by_the_next(tiny, text_image_meta, monkeypatch, caplog):
    """Under ``--skip_bad_samples`` a pack whose every sample fails to build is not a crash: the next pack is read
    (logged), and every failure is counted, as an unpacked dataset moves on to the next line."""
    model, tokenizer = tiny
    spec = load_meta(str(text_image_meta))[0]
    ds = SupervisedDataset(spec, tokenizer, model.config, skip_bad_samples=0.5)
    budget = max(ds.sample_size(line)[0] for line in set(ds.line_index))  # every sample fits
    packed = PackedDataset(TrainDataset(ConcatDataset([ds])), max_packed_tokens=budget, num_images_expected=30)
    broken = {ds.line_index[i] for i in packed.packs[0]}
    build = ds.sample_at_line

    def failing(line):
        if line in broken:
            raise DataError(f"mixed.jsonl:{line + 1}", "unreadable_media", "pixels cannot be decoded")
        return build(line)

    monkeypatch.setattr(ds, "sample_at_line", failing)
    with caplog.at_level("WARNING"):
        pack = packed[0]
    assert pack["seq_lens"] == [packed.sizes[i][0] for i in packed.packs[1]]
    assert ds.bad_count == len(broken) and "reading pack 1 instead" in caplog.text
    strict = SupervisedDataset(spec, tokenizer, model.config)
    packed_strict = PackedDataset(TrainDataset(ConcatDataset([strict])), max_packed_tokens=budget,
                                  num_images_expected=30)
    monkeypatch.setattr(strict, "sample_at_line", failing)
    with pytest.raises(DataError, match="pixels cannot be decoded"):
        packed_strict[0]


# ------------------------------------------------------------------------------------------- launcher runs
PACK_FLAGS = ("--use_packed_ds", "True", "--max_packed_tokens", "1024", "--num_images_expected", "12")


def test_resume_mid_epoch_with_packing(tiny_model_dir, small_demo, tmp_path):
    """Stopped after step 3 of an epoch of packs and relaunched: steps 4-6 log the uninterrupted losses."""
    def run(out):
        return run_launcher(*PACK_FLAGS, "--max_steps", "6", "--save_steps", "3", "--logging_steps", "1",
                            "--learning_rate", "1e-3", "--seed", "3", "--data_seed", "7", "--report_to", "none",
                            "--loss_reduction", "square", GPUS="1", PER_DEVICE_BATCH_SIZE="1", BATCH_SIZE="1",
                            MODEL=str(tiny_model_dir), META_PATH=str(small_demo / "train_meta.json"),
                            OUTPUT_DIR=str(out))

    full = tmp_path / "full"
    log = run(full)
    assert "packs of <= 1024 tokens" in log.stdout + log.stderr
    reference = logged_losses(full)
    state = json.loads((full / "trainer_state.json").read_text())
    assert state["log_history"][-2]["epoch"] < 1  # six steps are part of one epoch: a mid-epoch resume
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")
    run(resumed)
    again = logged_losses(resumed)
    for step in (4, 5, 6):
        assert again[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step


def test_zero3_with_packing_on_two_cpu_processes(tiny_model_dir, small_demo, tmp_path):
    out = tmp_path / "zero3_packed"
    proc = run_launcher(*PACK_FLAGS, "--deepspeed", "zero_stage3_config.json", "--max_steps", "3",
                        "--logging_steps", "1", "--report_to", "none", GPUS="2", PER_DEVICE_BATCH_SIZE="1",
                        BATCH_SIZE="2", MODEL=str(tiny_model_dir), META_PATH=str(small_demo / "train_meta.json"),
                        OUTPUT_DIR=str(out))
    log = proc.stdout + proc.stderr
    assert "process 0/2" in log and "process 1/2" in log and "LLM attention internvl_varlen" in log
    assert "sized by 2 process(es)" in log  # each rank sized half the samples; every rank planned all packs
    assert sorted(logged_losses(out)) == [1, 2, 3]
    assert (out / "training_finished.json").exists()


LORA_SCRIPT = "shell/internvl2.5/2nd_finetune/internvl2_5_1b_dynamic_res_2nd_finetune_lora.sh"


def test_internvl_lora_script_with_packed_flags(tiny_model_dir, small_demo, tmp_path):
    """``GPUS=8 sh ..._lora.sh --use_packed_ds True --max_packed_tokens 8192``: the launch parses (dry run of 8
    processes), and the same script trains on this CPU with one process on the tiny model."""
    from internvl.train.internvl_chat_finetune import parse_args

    proc = subprocess.run(["sh", LORA_SCRIPT, "--use_packed_ds", "True", "--max_packed_tokens", "8192"], cwd=REPO,
                          env=launcher_env(DRY_RUN="1", INTERNVL_DEVICE="cpu", GPUS="8"), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    argv = proc.stdout.splitlines()
    assert "--nproc_per_node=8" in argv
    script_args = argv[next(i for i, a in enumerate(argv) if a.endswith("internvl_chat_finetune.py")) + 1:]
    _, data_args, training_args, _ = parse_args(script_args + ["--output_dir", str(tmp_path / "dry")])
    assert data_args.use_packed_ds and data_args.max_packed_tokens == 8192 and data_args.num_images_expected == 40

    out = tmp_path / "lora_packed"
    run = run_launcher("--use_packed_ds", "True", "--max_packed_tokens", "8192", "--max_steps", "2",
                       "--dataloader_num_workers", "0", "--conv_style", "Hermes-2", "--force_image_size", "112",
                       "--max_dynamic_patch", "4", "--report_to", "none",
                       "--save_strategy", "no", script=LORA_SCRIPT, GPUS="1", BATCH_SIZE="2",
                       PER_DEVICE_BATCH_SIZE="2", MODEL=str(tiny_model_dir),
                       META_PATH=str(small_demo / "train_meta.json"), OUTPUT_DIR=str(out))
    log = run.stdout + run.stderr
    assert "--group_by_length is ignored with --use_packed_ds" in log
    assert sorted(logged_losses(out)) == [1, 2]
