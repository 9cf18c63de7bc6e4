"""chat() / batch_chat() with InternVL's signatures on the tiny model; tiling through the image reader."""
import pytest
import torch
from transformers import AutoTokenizer

from internvl.model.internvl_chat import InternVLChatModel

GREEDY = dict(max_new_tokens=6, do_sample=False)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return InternVLChatModel.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_chat_and_batch_chat_agree(tiny):
    model, tok = tiny
    size = model.config.image_size
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, size, size, generator=g), torch.randn(1, 3, size, size, generator=g)
    q1, q2 = "Which colour is the shape?", "How many shapes are in the image?"
    single = [model.chat(tok, a, q1, dict(GREEDY)), model.chat(tok, b, q2, dict(GREEDY))]
    batched = model.batch_chat(tok, torch.cat([a, b]), [q1, q2], dict(GREEDY), num_patches_list=[2, 1])
    assert batched == single
    text_only = model.chat(tok, None, "Hello", dict(GREEDY))
    assert isinstance(text_only, str)


def test_chat_history_and_multi_image(tiny):
    model, tok = tiny
    size = model.config.image_size
    pv = torch.randn(3, 3, size, size)
    q = "Image-1: <image>\nImage-2: <image>\nWhat differs?"
    answer, history = model.chat(tok, pv, q, dict(GREEDY), num_patches_list=[1, 2], return_history=True)
    assert history == [(q, answer)]
    # follow-ups pass the images again, as in InternVL's model card; the history holds the placeholders
    follow, history = model.chat(tok, pv, "And then?", dict(GREEDY), history=history, return_history=True,
                                 num_patches_list=[1, 2])
    assert len(history) == 2 and history[1][0] == "And then?"


def test_placeholder_count_mismatch_raises(tiny):
    model, tok = tiny
    size = model.config.image_size
    with pytest.raises(ValueError, match="placeholder"):
        model.chat(tok, torch.randn(2, 3, size, size), "<image>\n<image>\n<image>\nHi", dict(GREEDY),
                   num_patches_list=[1, 1])
