"""InternVL's chat model under the import path InternVL users already have.

``internvl_chat`` is registered with ``AutoConfig`` (no remote code), so transformers' Auto classes (e.g.
``AutoTokenizer`` reading a checkpoint's ``config.json``) recognise our checkpoints.
"""
from transformers import AutoConfig

from internvl.model.internvl_chat.configuration_internvl_chat import InternVLChatConfig
from internvl.model.internvl_chat.modeling_internvl_chat import InternVLChatModel

AutoConfig.register("internvl_chat", InternVLChatConfig, exist_ok=True)

__all__ = ["InternVLChatConfig", "InternVLChatModel"]
