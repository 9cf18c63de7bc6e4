"""Model side of InternVL-Med: registries for vision encoders and projectors, and the chat model.

``from internvl.model import create_vision_model`` gives any registered encoder by name; plugins (``patches/``)
register theirs on import and are discovered through the ``internvl.plugins`` entry points. Nothing here imports
``internvl.media``, ``internvl.data``, ``internvl.train`` or ``internvl.evaluation``.
"""
from internvl.model.projector import (PROJECTORS, create_projector, list_projectors, pixel_shuffle,
                                      register_projector)
from internvl.model.vision import (META_KEYS, VISION_MODELS, EncoderSpec, VisionEncoder, create_vision_model,
                                   create_vision_model_from_dict, encoder_class, list_vision_models,
                                   register_vision_model, vision_config_from_dict, vision_config_to_dict,
                                   vision_model_spec)

__all__ = ["META_KEYS", "PROJECTORS", "VISION_MODELS", "EncoderSpec", "VisionEncoder", "create_projector",
           "create_vision_model", "create_vision_model_from_dict", "encoder_class", "list_projectors",
           "list_vision_models", "pixel_shuffle", "register_projector", "register_vision_model",
           "vision_config_from_dict", "vision_config_to_dict", "vision_model_spec"]
