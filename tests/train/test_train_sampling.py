"""Which samples are drawn: ``--use_data_resampling`` (sqrt(len) dataset weights, seeded) and the row-based length
estimates that ``--group_by_length`` sorts by (no media is loaded for them)."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from transformers import AutoTokenizer
from transformers.trainer_pt_utils import LengthGroupedSampler

from internvl.model.internvl_chat import InternVLChatModel
from internvl.train.dataset import build_datasets
from internvl.train.internvl_chat_finetune import build_train_dataset, parse_args
from internvl.train.sampling import TrainDataset
from internvl.train.trainer_utils import InternVLTrainer

OPTIONS = dict(dynamic_image_size=True, use_thumbnail=True, max_dynamic_patch=4)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = InternVLChatModel.from_pretrained(str(tiny_model_dir))
    return tokenizer, model


@pytest.fixture(scope="module")
def two_datasets(small_demo, tmp_path_factory):
    """The demo rows as two datasets: all 96 lines, and a 24-line quarter (repeat_time 0.25)."""
    meta = json.loads((small_demo / "train_meta.json").read_text())
    entry = next(iter(meta.values()))
    path = tmp_path_factory.mktemp("meta") / "two.json"
    path.write_text(json.dumps({"big": entry, "small": dict(entry, repeat_time=0.25)}))
    return path


def test_resampling_weights_datasets_by_sqrt_length(tiny, two_datasets):
    tokenizer, model = tiny
    concat = build_datasets(str(two_datasets), tokenizer, model.config, data_options=OPTIONS)
    sizes = [len(d) for d in concat.datasets]
    assert sizes == [96, 24]
    resampled = TrainDataset(concat, resample=True, seed=1)
    assert len(resampled) == 120 and resampled.index_map == TrainDataset(concat, resample=True, seed=1).index_map
    counts = Counter(0 if i < 96 else 1 for i in resampled.index_map)
    # sqrt weights: 96 -> 2/3 of the draws, 24 -> 1/3 (by size it would be 4/5 and 1/5)
    assert 0.2 < counts[1] / 120 < 0.5
    assert TrainDataset(concat).index_map is None and TrainDataset(concat)[5]["sample_ref"] == concat[5]["sample_ref"]


def test_length_estimates_and_group_by_length_sampler(tiny, small_demo, tmp_path):
    tokenizer, model = tiny
    concat = build_datasets(str(small_demo / "train_meta.json"), tokenizer, model.config, data_options=OPTIONS)
    data = TrainDataset(concat)
    lengths = data.estimated_lengths()
    assert len(lengths) == len(data)
    rows = [json.loads(line) for line in (small_demo / "train.jsonl").read_text().splitlines() if line.strip()]
    per_image = model.config.num_image_token * (4 + 1)  # max_dynamic_patch + thumbnail, InternVL's estimate
    text = "\n".join(t["value"] for t in rows[0]["conversations"])
    assert lengths[0] == len(tokenizer(text, add_special_tokens=False)["input_ids"]) + per_image
    _, _, args, _ = parse_args(["--output_dir", str(tmp_path), "--group_by_length", "True",
                                "--per_device_train_batch_size", "4", "--report_to", "none"])
    trainer = InternVLTrainer(model=model, args=args, train_dataset=data)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler) and list(sampler.lengths) == lengths
    assert sorted(sampler) == list(range(len(data)))


def test_bad_sample_flags_reach_the_datasets(tiny, small_demo, tmp_path):
    tokenizer, model = tiny
    meta = str(small_demo / "train_meta.json")
    for flags, fraction in (([], 0.0), (["--skip_bad_samples", "True"], 0.01),
                            (["--skip_bad_samples", "True", "--bad_sample_budget", "0.25"], 0.25)):
        _, data_args, args, _ = parse_args(["--output_dir", str(tmp_path), "--meta_path", meta,
                                            "--conv_style", "internvl2_5", *flags])
        data = build_train_dataset(tokenizer, model, data_args, args)
        assert [d.skip_fraction for d in data.concat.datasets] == [fraction]
