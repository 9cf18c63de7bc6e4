"""Chat templates render exactly InternVL's strings (research note §2.5)."""
import pytest

from internvl.conversation import (INTERNVL2_SYSTEM_MESSAGE, INTERNVL25_SYSTEM_MESSAGE, get_conv_template,
                                   list_conv_templates, render_prompt)

SYS = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
SYS25 = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"

EXPECTED = {
    "Hermes-2": (f"<|im_start|>system\n{SYS}<|im_end|><|im_start|>user\n<image>\nQ1<|im_end|>"
                 "<|im_start|>assistant\nA1<|im_end|><|im_start|>user\nQ2<|im_end|><|im_start|>assistant\n"),
    "internlm2-chat": (f"<|im_start|>system\n{SYS}<|im_end|><|im_start|>user\n<image>\nQ1<|im_end|>"
                       "<|im_start|>assistant\nA1<|im_end|><|im_start|>user\nQ2<|im_end|><|im_start|>assistant\n"),
    "phi3-chat": (f"<|system|>\n{SYS}<|end|><|user|>\n<image>\nQ1<|end|><|assistant|>\nA1<|end|>"
                  "<|user|>\nQ2<|end|><|assistant|>\n"),
    "internvl2_5": (f"<|im_start|>system\n{SYS25}<|im_end|>\n<|im_start|>user\n<image>\nQ1<|im_end|>\n"
                    "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"),
}
STOP = {"Hermes-2": "<|im_end|>", "internlm2-chat": "<|im_end|>", "phi3-chat": "<|end|>", "internvl2_5": "<|im_end|>"}


def test_system_messages_are_internvls():
    assert INTERNVL2_SYSTEM_MESSAGE == SYS and INTERNVL25_SYSTEM_MESSAGE == SYS25
    assert set(EXPECTED) <= set(list_conv_templates())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rendered_string_and_stop(name):
    conv = get_conv_template(name)
    conv.append_message(conv.roles[0], "<image>\nQ1")
    conv.append_message(conv.roles[1], "A1")
    conv.append_message(conv.roles[0], "Q2")
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == EXPECTED[name]
    assert conv.stop_str == STOP[name] == conv.sep.strip()
    prompt, stop = render_prompt(name, "Q2", history=[("<image>\nQ1", "A1")])
    assert (prompt, stop) == (EXPECTED[name], STOP[name])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pieces_concatenate_to_prompt(name):
    conv = get_conv_template(name)
    conv.append_message(conv.roles[0], "Q")
    conv.append_message(conv.roles[1], "A")
    pieces = conv.message_pieces()
    assert [p[0] for p in pieces] == ["system", "user", "assistant"]
    assert "".join(a + b + c for _, a, b, c in pieces) == conv.get_prompt()


def test_system_override_and_fresh_copies():
    prompt, _ = render_prompt("internvl2_5", "Hi", system_message="You are a radiologist.")
    assert prompt == ("<|im_start|>system\nYou are a radiologist.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                      "<|im_start|>assistant\n")
    conv = get_conv_template("Hermes-2")
    conv.set_system_message("changed")
    conv.append_message(conv.roles[0], "x")
    fresh = get_conv_template("Hermes-2")
    assert fresh.system_message == SYS and fresh.messages == []


def test_unknown_template_and_role():
    with pytest.raises(KeyError, match="unknown conversation template 'nope'"):
        get_conv_template("nope")
    with pytest.raises(ValueError, match="unknown role"):
        get_conv_template("Hermes-2").append_message("<|user|>\n", "x")
