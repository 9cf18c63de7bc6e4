"""Chat templates: how a (system, user, assistant, ...) conversation becomes one prompt string.

The four templates InternVL checkpoints were trained with render exactly as InternVL renders them (research note
§2.5), all in the "MPT" style: ``system_template.format(system_message) + sep``, then per message
``role + text + sep`` (an unanswered last message renders as the bare ``role``, which cues the reply).

==================  =========================================================================  ===============
template            rendered                                                                    checkpoints
==================  =========================================================================  ===============
``Hermes-2``        ``<|im_start|>system\\nSYS<|im_end|><|im_start|>user\\nQ<|im_end|>``...      InternVL2-1B/40B
                    (ChatML, **no** newline after ``<|im_end|>``)
``internlm2-chat``  identical string to ``Hermes-2`` (used with the InternLM2 tokenizer)         InternVL2-2B/8B/..
``phi3-chat``       ``<|system|>\\nSYS<|end|><|user|>\\nQ<|end|><|assistant|>\\n``                  InternVL2-4B
``internvl2_5``     ChatML **with** a newline after each ``<|im_end|>``, its own system prompt      InternVL2.5 / 3
==================  =========================================================================  ===============

``Conversation.end_token`` is the string that closes a message (``sep`` without trailing whitespace); generation
stops on it and training supervises it. ``render_prompt`` is the one-call form used by ``chat()``/``batch_chat``.
The same objects drive label masking in ``internvl.prompt`` (``message_pieces``), so training and
inference render identical strings.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable, Sequence

# InternVL 2.0 system prompt (Hermes-2, internlm2-chat, phi3-chat)
INTERNVL2_SYSTEM_MESSAGE = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
# InternVL 2.5 / 3 system prompt
INTERNVL25_SYSTEM_MESSAGE = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"

USER, ASSISTANT = 0, 1  # indices into Conversation.roles


@dataclass
class Conversation:
    """One chat template plus the messages of one conversation (InternVL/FastChat-like API).

    ``roles`` are the rendered role prefixes (``roles[0]`` user, ``roles[1]`` assistant), so
    ``conv.append_message(conv.roles[0], "question")`` works as in InternVL.
    """

    name: str
    system_template: str
    system_message: str
    roles: tuple[str, str]
    sep: str
    end_token: str
    messages: list[list] = field(default_factory=list)

    def __post_init__(self):
        if not self.sep.startswith(self.end_token):
            raise ValueError(f"template {self.name!r}: sep {self.sep!r} must start with end_token {self.end_token!r}")

    @property
    def stop_str(self) -> str:
        """The string generation stops on (InternVL: ``sep.strip()``)."""
        return self.end_token

    @property
    def sep_tail(self) -> str:
        """What ``sep`` adds after the end token (``"\\n"`` for internvl2_5, ``""`` for Hermes-2)."""
        return self.sep[len(self.end_token):]

    def set_system_message(self, system_message: str) -> None:
        self.system_message = system_message

    def append_message(self, role: str, message: str | None) -> None:
        """Add a message; ``role`` is ``roles[0]``/``roles[1]``; ``message=None`` leaves the turn open."""
        if role not in self.roles:
            raise ValueError(f"template {self.name!r}: unknown role {role!r}; roles are {self.roles}")
        self.messages.append([role, message])

    def update_last_message(self, message: str) -> None:
        self.messages[-1][1] = message

    def system_text(self) -> str:
        return self.system_template.format(system_message=self.system_message)

    def message_pieces(self) -> list[tuple[str, str, str, str]]:
        """The prompt as ``(kind, prefix, text, suffix)`` pieces whose concatenation is ``get_prompt()``.

        ``kind`` is ``"system"``, ``"user"``, ``"assistant"``, or ``"open"`` (the bare role cueing a reply).
        The system piece is ``("system", "", system_text, sep)``; a message piece is ``(kind, role, text, sep)``.
        """
        pieces = [("system", "", self.system_text(), self.sep)]
        for role, message in self.messages:
            kind = "user" if role == self.roles[USER] else "assistant"
            if message is None:
                pieces.append(("open", role, "", ""))
            else:
                pieces.append((kind, role, message, self.sep))
        return pieces

    def get_prompt(self) -> str:
        return "".join(prefix + text + suffix for _, prefix, text, suffix in self.message_pieces())

    def copy(self) -> "Conversation":
        return copy.deepcopy(self)


_TEMPLATES: dict[str, Conversation] = {}


def register_conv_template(template: Conversation, override: bool = False) -> None:
    """Add a template under ``template.name`` (duplicates raise unless ``override``)."""
    if template.name in _TEMPLATES and not override:
        raise ValueError(f"conversation template {template.name!r} is already registered")
    _TEMPLATES[template.name] = template


def get_conv_template(name: str) -> Conversation:
    """A fresh copy (no messages) of the template registered as ``name``."""
    if name not in _TEMPLATES:
        raise KeyError(f"unknown conversation template {name!r}; known: {', '.join(list_conv_templates())}")
    return _TEMPLATES[name].copy()


def list_conv_templates() -> list[str]:
    return sorted(_TEMPLATES)


def render_prompt(template_name: str, question: str, history: Iterable[Sequence[str]] = (),
                  system_message: str | None = None) -> tuple[str, str]:
    """The prompt that asks ``question`` after ``history`` (``[(q, a), ...]``), and the stop string.

    ``system_message=None`` keeps the template's default system prompt. The prompt ends with the assistant
    role prefix, so generation continues with the answer; cut the answer at the returned stop string.
    """
    conv = get_conv_template(template_name)
    if system_message is not None:
        conv.set_system_message(system_message)
    for old_q, old_a in history:
        conv.append_message(conv.roles[USER], old_q)
        conv.append_message(conv.roles[ASSISTANT], old_a)
    conv.append_message(conv.roles[USER], question)
    conv.append_message(conv.roles[ASSISTANT], None)
    return conv.get_prompt(), conv.stop_str


_CHATML = dict(system_template="<|im_start|>system\n{system_message}",
               roles=("<|im_start|>user\n", "<|im_start|>assistant\n"), end_token="<|im_end|>")

register_conv_template(Conversation(name="Hermes-2", system_message=INTERNVL2_SYSTEM_MESSAGE, sep="<|im_end|>",
                                    **_CHATML))
register_conv_template(Conversation(name="internlm2-chat", system_message=INTERNVL2_SYSTEM_MESSAGE,
                                    sep="<|im_end|>", **_CHATML))
register_conv_template(Conversation(name="internvl2_5", system_message=INTERNVL25_SYSTEM_MESSAGE,
                                    sep="<|im_end|>\n", **_CHATML))
register_conv_template(Conversation(name="phi3-chat", system_template="<|system|>\n{system_message}",
                                    system_message=INTERNVL2_SYSTEM_MESSAGE, roles=("<|user|>\n", "<|assistant|>\n"),
                                    sep="<|end|>", end_token="<|end|>"))

__all__ = ["Conversation", "INTERNVL2_SYSTEM_MESSAGE", "INTERNVL25_SYSTEM_MESSAGE", "get_conv_template",
           "list_conv_templates", "register_conv_template", "render_prompt"]
