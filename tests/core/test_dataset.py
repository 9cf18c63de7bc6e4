"""Meta JSON + JSONL dataset: row types, repeat_time, path resolution, plugin media kinds, kind checks."""
import json

import pytest
import torch
from torch import nn
from transformers import PretrainedConfig

from core_data_helpers import qa, write_image, write_jsonl, write_meta
from internvl.media import MEDIA_READERS, MediaReader, register_media_reader
from internvl.model.internvl_chat.configuration_internvl_chat import InternVLChatConfig
from internvl.model.vision.base import VISION_MODELS, EncoderSpec, VisionEncoder
from internvl.constants import IGNORE_INDEX
from internvl.train.dataset import SupervisedDataset, build_datasets
from internvl.errors import DataError
from internvl.data.meta import MetaError, load_meta, select_lines


def _dataset(tmp_path, rows, tok, config, *, repeat_time=1, name="ds", **kw):
    write_jsonl(tmp_path / "ann.jsonl", rows)
    meta = write_meta(tmp_path / "meta.json", {name: {"root": str(tmp_path / "img"), "annotation": "ann.jsonl",
                                                      "repeat_time": repeat_time}})
    return SupervisedDataset(load_meta(str(meta))[0], tok, config, max_seq_length=kw.pop("max_seq_length", 2048),
                             data_options={"dynamic_image_size": True, "use_thumbnail": True,
                                           "max_dynamic_patch": 4}, **kw)


def _ctx(tok, sample):
    return (sample["input_ids"] == tok.convert_tokens_to_ids("<IMG_CONTEXT>")).sum().item()


def test_row_types(tmp_path, tok, chat_config):
    write_image(tmp_path / "img" / "wide.png", (400, 100))  # 4x1 + thumbnail = 5 tiles
    write_image(tmp_path / "img" / "sq.png", (50, 50))  # 1 tile
    rows = [
        qa("Hello?", "Hi."),
        qa("Describe.", "Red.", image="wide.png"),  # no placeholder: "<image>\n" prepended
        qa("<image>\nfirst <image>\nsecond", "Both red.", image=["wide.png", "sq.png"]),
        qa("<image>\nWhere is the lesion?", "<ref>lesion</ref><box>[[10, 20, 300, 400]]</box>", image="sq.png"),
        {"image": "sq.png", "conversations": [{"from": "system", "value": "Be brief."},
                                              {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]},
    ]
    ds = _dataset(tmp_path, rows, tok, chat_config)
    per_tile = chat_config.num_image_token
    size = chat_config.image_size
    text, single, multi, ground, system = (ds[i] for i in range(5))
    # text-only: no item, no context token
    assert text["pixel_values"] == [] and text["item_kinds"] == [] and _ctx(tok, text) == 0
    assert text["sample_ref"].endswith("ann.jsonl:1")
    # single image: 5 tiles, prepended placeholder
    assert single["item_kinds"] == ["image"] * 5 and _ctx(tok, single) == 5 * per_tile
    assert single["pixel_values"][0].shape == (3, size, size)
    assert tok.decode(single["input_ids"]).count("<img>") == 1
    assert "</img>\nDescribe." in tok.decode(single["input_ids"])
    # multi image: the 4-tile budget is shared (2 each: 2x1 + thumbnail for wide, 1 for the square)
    assert len(multi["pixel_values"]) == 3 + 1 and _ctx(tok, multi) == 4 * per_tile
    assert tok.decode(multi["input_ids"]).count("<img>") == 2
    # grounding text untouched and trained
    trained = tok.decode(ground["input_ids"][ground["labels"] != IGNORE_INDEX])
    assert trained == "<ref>lesion</ref><box>[[10, 20, 300, 400]]</box><|im_end|>"
    assert tok.decode(system["input_ids"]).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    for s in (text, single, multi, ground, system):
        n = s["input_ids"].numel()
        assert s["position_ids"].tolist() == list(range(n)) and s["attention_mask"].sum().item() == n
        assert s["labels"].shape == s["input_ids"].shape


def test_repeat_time(tmp_path, tok, chat_config):
    rows = [qa(f"Question {i}?", f"Answer {i}.") for i in range(20)]
    half = _dataset(tmp_path, rows, tok, chat_config, repeat_time=0.5)
    assert len(half) == 10 and len(set(half.line_index)) == 10
    assert half.line_index != list(range(10))  # a random subset, not InternVL's first lines
    assert _dataset(tmp_path, rows, tok, chat_config, repeat_time=0.5).line_index == half.line_index  # fixed seed
    assert len(_dataset(tmp_path, rows, tok, chat_config, repeat_time=2)) == 40
    frac = _dataset(tmp_path, rows, tok, chat_config, repeat_time=2.5)
    assert len(frac) == 50 and frac.line_index[:40] == list(range(20)) * 2
    assert select_lines(20, 0.5, seed=1, name="ds") != select_lines(20, 0.5, seed=2, name="ds")
    assert half[3]["sample_ref"] == half.sample_ref(3)


def test_meta_paths_and_validation(tmp_path, tok, chat_config, monkeypatch):
    write_image(tmp_path / "data" / "img" / "a.png", (300, 100))
    write_jsonl(tmp_path / "data" / "ann.jsonl", [qa("<image>\nQ", image="a.png")])
    meta = write_meta(tmp_path / "data" / "meta.json", {"d": {"root": "img", "annotation": "ann.jsonl",
                                                              "max_dynamic_patch": 2, "task": "vqa"}})
    monkeypatch.chdir(tmp_path)  # neither path exists relative to the cwd: both resolve against the meta's dir
    spec = load_meta(str(meta))[0]
    assert spec.root == str(tmp_path / "data" / "img") and spec.annotation == str(tmp_path / "data" / "ann.jsonl")
    assert spec.max_dynamic_patch == 2 and spec.task == "vqa" and spec.options == {"max_dynamic_patch": 2}
    concat = build_datasets(str(meta), tok, chat_config, data_options={"dynamic_image_size": True, "use_thumbnail": False,
                                                                        "max_dynamic_patch": 12})
    assert len(concat) == 1 and len(concat[0]["pixel_values"]) == 2  # 3:1 image: 3x1 by default, the meta caps it at 2x1
    for bad, msg in [({"d": {"root": "x", "annotation": "a.json"}}, "must be a .jsonl"),
                     ({"d": {"annotation": "a.jsonl"}}, "missing or empty 'root'"),
                     ({"d": {"root": "x", "annotation": "a.jsonl", "repeat_time": 0}}, "repeat_time"),
                     ({}, "non-empty object")]:
        with pytest.raises(MetaError, match=msg):
            load_meta(str(write_meta(tmp_path / "bad.json", bad)))
    with pytest.raises(FileNotFoundError, match="annotation .*nothere.jsonl not found"):
        build_datasets(str(write_meta(tmp_path / "m2.json", {"d": {"root": ".", "annotation": "nothere.jsonl"}})),
                       tok, chat_config)


def test_malformed_line_reports_its_line_number(tmp_path, tok, chat_config):
    ds = _dataset(tmp_path, [qa("Q?"), "", "   ", '{"conversations": [oops', qa("Q2?")], tok, chat_config)
    assert len(ds) == 3  # blank lines are not rows
    assert ds[2]["sample_ref"].endswith("ann.jsonl:5")
    with pytest.raises(DataError, match=r"ann\.jsonl:4: not valid JSON") as err:
        ds[1]
    assert err.value.reason == "malformed_json"


# ---- a plugin-style media kind, registered here: the dataset must handle it without naming it ----------------
class BagConfig(PretrainedConfig):
    model_type = "core_test_bag"

    def __init__(self, hidden_size=8, input_kinds=("core_test_bag",), encoder_name="core_test_bag", **kwargs):
        self.hidden_size = hidden_size
        self.input_kinds = list(input_kinds)
        self.encoder_name = encoder_name
        super().__init__(**kwargs)


class BagEncoder(VisionEncoder):
    """Feature bags ``[N, D]`` -> N tokens."""

    config_class = BagConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config if isinstance(config, BagConfig) else BagConfig(**overrides))
        self.proj = nn.Identity()
        self.post_init()

    @classmethod
    def num_tokens(cls, config, item):
        return int(item.shape[0])

    @classmethod
    def dummy_input(cls, config):
        return torch.zeros(1, config.hidden_size)

    def forward(self, pixel_values, **_):
        return pixel_values


class BagReader(MediaReader):
    kind = "core_test_bag"
    placeholder = "<bag>"
    placeholder_aliases = ("<features>",)

    def load(self, ref, *, is_train=False):
        with open(ref) as f:
            return [torch.tensor(json.load(f), dtype=torch.float32)]


@pytest.fixture(scope="module")
def bag_kind():
    VISION_MODELS.register("core_test_bag", EncoderSpec("core_test_bag", BagEncoder, BagEncoder))
    register_media_reader("core_test_bag", aliases=("core_test_feats",))(BagReader)
    yield
    VISION_MODELS._items.pop("core_test_bag")
    MEDIA_READERS._items.pop("core_test_bag")
    MEDIA_READERS._aliases.pop("core_test_feats")


def test_plugin_kind_dispatch_and_kind_check(tmp_path, tok, chat_config, bag_kind):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "b1.json").write_text(json.dumps([[0.5] * 8] * 3))
    (tmp_path / "img" / "b2.json").write_text(json.dumps([[1.0] * 8] * 5))
    write_image(tmp_path / "img" / "a.png")
    cfg = InternVLChatConfig.build(vision="core_test_bag", llm_config=chat_config.llm_config, projector="mlp",
                                   template="internvl2_5")
    rows = [qa("<features>\nQ", core_test_feats="b1.json"),  # alias key + alias placeholder
            qa("<bag> and <bag>", core_test_bag=["b1.json", "b2.json"]),
            qa("text only"),
            qa("<image>\nQ", image="a.png")]
    ds = _dataset(tmp_path, rows, tok, cfg)
    one, two, text = ds[0], ds[1], ds[2]
    assert _ctx(tok, one) == 3 and [t.shape for t in one["pixel_values"]] == [(3, 8)]
    assert _ctx(tok, two) == 8 and one["item_kinds"] == ["core_test_bag"] and len(two["item_kinds"]) == 2
    assert text["pixel_values"] == []
    with pytest.raises(DataError, match=r"ann\.jsonl:4: row has 'image' media but no vision encoder of this model "
                                        r"reads 'image' media; it reads \['core_test_bag'\]") as err:
        ds[3]
    assert err.value.reason == "incompatible_kind"
    # and the image encoder refuses bags, naming the line
    ds_img = _dataset(tmp_path / "other", [qa("<bag>", core_test_bag="../img/b1.json")], tok, chat_config)
    with pytest.raises(DataError, match=r"ann\.jsonl:1: row has 'core_test_bag' media .* it reads \['image'\]"):
        ds_img[0]
    # a text row must not carry any registered placeholder
    ds_txt = _dataset(tmp_path / "t", [qa("what is <bag>?")], tok, cfg)
    with pytest.raises(DataError, match=r"\['<bag>'\] placeholder.* no media"):
        ds_txt[0]
