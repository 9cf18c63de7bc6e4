"""Bad-data policy: raise naming file:line by default; a counted, logged, budgeted skip on request."""
import logging

import pytest
from torch.utils.data import DataLoader

from core_data_helpers import bad_rows, qa, write_jsonl, write_meta
from internvl.data.collate import DataCollator
from internvl.train.dataset import SupervisedDataset, skip_fraction
from internvl.errors import DataError, SkipBudgetExceeded, TemplateError
from internvl.data.meta import load_meta

OPTS = {"dynamic_image_size": True, "use_thumbnail": True, "max_dynamic_patch": 4}


def _dataset(tmp_path, rows, tok, config, **kw):
    write_jsonl(tmp_path / "ann.jsonl", rows)
    meta = write_meta(tmp_path / "meta.json", {"d": {"root": str(tmp_path / "img"), "annotation": "ann.jsonl"}})
    kw.setdefault("max_seq_length", 2048)
    return SupervisedDataset(load_meta(str(meta))[0], tok, config, data_options=OPTS, **kw)


def test_each_bad_case_raises_naming_file_and_line(tmp_path, tok, chat_config):
    cases = bad_rows(tmp_path)
    ds = _dataset(tmp_path, [qa("fine")] + [row for row, _ in cases], tok, chat_config, max_seq_length=200)
    assert ds[0]["input_ids"].numel() > 0
    for i, (_, reason) in enumerate(cases, start=1):
        with pytest.raises(DataError) as err:
            ds[i]
        assert err.value.reason == reason, (i, str(err.value))
        assert err.value.sample_ref == f"{tmp_path / 'ann.jsonl'}:{i + 1}"
        assert str(err.value).startswith(f"{tmp_path / 'ann.jsonl'}:{i + 1}: ")


def test_template_mismatch_is_never_skipped(tmp_path, tok, chat_config):
    with pytest.raises(TemplateError, match="phi3-chat"):
        _dataset(tmp_path, [qa("Q")], tok, chat_config, template_name="phi3-chat", skip_bad_samples=0.5)


def test_skip_fraction_values():
    assert skip_fraction(False) == 0 and skip_fraction(None) == 0 and skip_fraction(True) == 0.01
    assert skip_fraction(0.05) == 0.05
    with pytest.raises(ValueError):
        skip_fraction(1.5)


def test_skip_replaces_with_next_good_sample_and_counts(tmp_path, tok, chat_config, caplog):
    rows = [qa(f"Question {i}?", f"Answer {i}.") for i in range(200)]
    rows[4] = '{"broken'
    rows[5] = qa("<image>\nQ", image="missing.png")
    ds = _dataset(tmp_path, rows, tok, chat_config, skip_bad_samples=True)  # 1% of 200 = 2 allowed
    assert ds.bad_budget == 2
    with caplog.at_level(logging.WARNING, logger="internvl.train.dataset"):
        sample = ds[4]
    assert sample["sample_ref"].endswith("ann.jsonl:7")  # lines 5 and 6 are bad: the next good one is used
    assert ds.bad_count == 2
    assert "ann.jsonl:5" in caplog.text and "ann.jsonl:6" in caplog.text and "malformed_json" in caplog.text
    assert ds[5]["sample_ref"].endswith("ann.jsonl:7") and ds.bad_count == 2  # seen again: not counted twice
    ds.line_index.append(ds.line_index[0])  # sanity: the good rows are untouched
    assert ds[0]["sample_ref"].endswith("ann.jsonl:1")


def test_skip_budget_exceeded_raises(tmp_path, tok, chat_config):
    rows = [qa(f"Question {i}?") for i in range(100)]
    rows[10] = rows[20] = '{"nope'
    ds = _dataset(tmp_path, rows, tok, chat_config, skip_bad_samples=0.01)  # 1 allowed
    assert ds[10]["sample_ref"].endswith(":12")
    with pytest.raises(SkipBudgetExceeded, match=r"2 bad samples exceed the skip budget of 1 .*ann\.jsonl:21"):
        ds[20]


def test_skip_counts_across_dataloader_workers(tmp_path, tok, chat_config):
    rows = [qa(f"Question {i}?") for i in range(100)]
    for i in (3, 40, 77):
        rows[i] = '{"nope'
    ds = _dataset(tmp_path, rows, tok, chat_config, skip_bad_samples=0.03)  # 3 allowed
    loader = DataLoader(ds, batch_size=8, num_workers=2, collate_fn=DataCollator.from_tokenizer(tok))
    assert sum(b["input_ids"].shape[0] for b in loader) == 100
    assert ds.bad_count == 3  # counted in the workers, visible here
    tight = _dataset(tmp_path / "t", rows, tok, chat_config, skip_bad_samples=0.02)  # 2 allowed, 3 bad
    with pytest.raises(Exception, match="exceed the skip budget"):
        for _ in DataLoader(tight, batch_size=8, num_workers=2, collate_fn=DataCollator.from_tokenizer(tok)):
            pass


def test_default_policy_raises_through_dataloader_workers(tmp_path, tok, chat_config):
    rows = [qa(f"Question {i}?") for i in range(20)]
    rows[13] = '{"nope'
    ds = _dataset(tmp_path, rows, tok, chat_config)
    with pytest.raises(DataError, match=r"ann\.jsonl:14: not valid JSON"):
        for _ in DataLoader(ds, batch_size=4, num_workers=2, collate_fn=DataCollator.from_tokenizer(tok)):
            pass
