"""InternVL's chat model under the import path InternVL users already have."""
from internvl.model.internvl_chat.configuration_internvl_chat import InternVLChatConfig
from internvl.model.internvl_chat.modeling_internvl_chat import InternVLChatModel

__all__ = ["InternVLChatConfig", "InternVLChatModel"]
