"""Tokenisation + label masking: only assistant text and the end token are trained; errors name the sample."""
import pytest
import torch

from internvl.conversation import get_conv_template
from internvl.constants import IGNORE_INDEX
from internvl.errors import DataError, TemplateError
from internvl.prompt import image_token_string, preprocess

CONV = [{"from": "human", "value": "<image>\nWhat is shown?"},
        {"from": "gpt", "value": "A nodule <ref>nodule</ref><box>[[10, 20, 300, 400]]</box>"},
        {"from": "human", "value": "Is it benign?"},
        {"from": "gpt", "value": "Yes."}]


def _trained_text(tokenizer, out):
    return tokenizer.decode(out["input_ids"][out["labels"] != IGNORE_INDEX])


def _expected_prompt(name, conv, n_tokens):
    c = get_conv_template(name)
    for i, turn in enumerate(conv):
        text = turn["value"].replace("<image>", image_token_string(n_tokens)) if i % 2 == 0 else turn["value"]
        c.append_message(c.roles[i % 2], text)
    return c.get_prompt()


@pytest.mark.parametrize("name", ["Hermes-2", "internvl2_5", "internlm2-chat", "phi3-chat"])
def test_labels_train_assistant_text_and_end_token(name, tok, phi3_tok):
    tokenizer = phi3_tok if name == "phi3-chat" else tok
    end = get_conv_template(name).end_token
    out = preprocess(name, CONV, tokenizer, [5], sample_ref="a.jsonl:3")
    ids, labels = out["input_ids"], out["labels"]
    assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape == out["attention_mask"].shape
    # the tokens are the tokenisation of the rendered prompt, images expanded
    whole = tokenizer(_expected_prompt(name, CONV, 5), add_special_tokens=False)["input_ids"]
    assert ids.tolist() == whole
    # trained: exactly the two answers, each followed by the end token
    assert _trained_text(tokenizer, out) == f"{CONV[1]['value']}{end}Yes.{end}"
    trained = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
    end_id = tokenizer.convert_tokens_to_ids(end)
    assert [ids[i].item() for i in trained].count(end_id) == 2
    assert labels[trained].tolist() == ids[trained].tolist()
    assert out["num_trained"] == len(trained)
    # the newline after <|im_end|> (internvl2_5) is not trained: the last token is untrained there
    if name == "internvl2_5":
        assert labels[-1].item() == IGNORE_INDEX and tokenizer.decode(ids[-1:]) == "\n"
    else:
        assert labels[-1].item() == end_id


def test_image_expansion_in_order(tok):
    conv = [{"from": "human", "value": "<image> first <image> second"}, {"from": "gpt", "value": "ok"}]
    out = preprocess("internvl2_5", conv, tok, [3, 7], sample_ref="m.jsonl:1")
    text = tok.decode(out["input_ids"])
    assert "<image>" not in text
    assert f"<img>{'<IMG_CONTEXT>' * 3}</img> first <img>{'<IMG_CONTEXT>' * 7}</img> second" in text
    ctx = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert (out["input_ids"] == ctx).sum().item() == 10
    assert (out["labels"][out["input_ids"] == ctx] == IGNORE_INDEX).all()


def test_system_turn_replaces_default_and_grounding_passes_through(tok):
    conv = [{"from": "system", "value": "You are a pathologist."}] + CONV
    out = preprocess("internvl2_5", conv, tok, [2], sample_ref="s.jsonl:9")
    text = tok.decode(out["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are a pathologist.<|im_end|>\n<|im_start|>user\n")
    assert "书生" not in text
    assert "<ref>nodule</ref><box>[[10, 20, 300, 400]]</box>" in text
    assert "You are a pathologist." not in _trained_text(tok, out)


def test_bos_tokenizer_gets_untrained_bos(bos_tok):
    out = preprocess("Hermes-2", CONV, bos_tok, [1], sample_ref="b.jsonl:1")
    bos = bos_tok.convert_tokens_to_ids("<s>")
    assert out["input_ids"][0].item() == bos and out["labels"][0].item() == IGNORE_INDEX
    assert (out["input_ids"] == bos).sum().item() == 1
    assert _trained_text(bos_tok, out) == f"{CONV[1]['value']}<|im_end|>Yes.<|im_end|>"


def test_template_not_matching_tokenizer_names_sample(tok):
    with pytest.raises(TemplateError, match=r"file\.jsonl:17: end token '<\|end\|>' of template 'phi3-chat'"):
        preprocess("phi3-chat", CONV, tok, [1], sample_ref="file.jsonl:17")


def test_piecewise_disagreeing_with_whole_raises(merging_tok):
    conv = [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "\nsome text"}]
    with pytest.raises(DataError, match=r"x\.jsonl:4: .*tokenis") as err:
        preprocess("internvl2_5", conv, merging_tok, [], sample_ref="x.jsonl:4")
    assert err.value.reason == "tokenization_mismatch" and err.value.sample_ref == "x.jsonl:4"


def test_truncation_never_cuts_an_image_span(tok):
    full = preprocess("internvl2_5", CONV, tok, [40], sample_ref="t.jsonl:2")
    n = len(full["input_ids"])
    img_end = (full["input_ids"] == tok.convert_tokens_to_ids("</img>")).nonzero().item()
    with pytest.raises(DataError, match=r"t\.jsonl:2: .*image tokens") as err:
        preprocess("internvl2_5", CONV, tok, [40], sample_ref="t.jsonl:2", max_length=img_end)
    assert err.value.reason == "too_long"
    # cutting only text keeps the prefix and trains what is left
    cut = preprocess("internvl2_5", CONV, tok, [40], sample_ref="t.jsonl:2", max_length=n - 3)
    assert cut["input_ids"].tolist() == full["input_ids"][:n - 3].tolist()
    assert cut["num_trained"] < full["num_trained"]
    # a cut that leaves no answer token is an error, not a fully masked sample
    first_trained = (full["labels"] != IGNORE_INDEX).nonzero()[0].item()
    with pytest.raises(DataError) as err:
        preprocess("internvl2_5", CONV, tok, [40], sample_ref="t.jsonl:2", max_length=first_trained)
    assert err.value.reason == "no_trained_tokens"


@pytest.mark.parametrize("conv, counts, reason", [
    (CONV, [], "placeholder_mismatch"),
    (CONV, [1, 1], "placeholder_mismatch"),
    ([{"from": "human", "value": "Q"}, {"from": "gpt", "value": "see <image>"}], [1], "placeholder_mismatch"),
    ([{"from": "human", "value": "<IMG_CONTEXT> Q"}, {"from": "gpt", "value": "A"}], [], "reserved_token"),
    ([{"from": "gpt", "value": "A"}], [], "bad_row"),
    ([{"from": "human", "value": "Q"}, {"from": "human", "value": "Q"}], [], "bad_row"),
    ([{"from": "human", "value": "Q"}, {"from": "bot", "value": "A"}], [], "bad_row"),
    ([{"from": "human", "value": "Q"}, {"from": "system", "value": "S"}], [], "bad_row"),
    ([{"from": "human", "value": 3}, {"from": "gpt", "value": "A"}], [], "bad_row"),
    ([{"from": "human", "value": "Q"}], [], "no_trained_tokens"),
    ([], [], "bad_row"),
])
def test_malformed_conversations(tok, conv, counts, reason):
    with pytest.raises(DataError, match=r"^r\.jsonl:5: ") as err:
        preprocess("internvl2_5", conv, tok, counts, sample_ref="r.jsonl:5")
    assert err.value.reason == reason
