"""Model side of InternVL-Med: registries for vision encoders and projectors, and the chat model.

``from internvl.model import create_vision_model`` gives any registered encoder by name; plugins (``patches/``)
register theirs on import and are discovered through the ``internvl.plugins`` entry points.
"""
from internvl.model.projector import (PROJECTORS, create_projector, list_projectors, pixel_shuffle,
                                      register_projector)
from internvl.model.vision import (VISION_MODELS, VisionEncoder, create_vision_model, create_vision_model_from_dict,
                                   encoder_class, encoder_factory, list_vision_models, register_vision_model)

__all__ = ["PROJECTORS", "VISION_MODELS", "VisionEncoder", "create_projector", "create_vision_model",
           "create_vision_model_from_dict", "encoder_class", "encoder_factory", "list_projectors",
           "list_vision_models", "pixel_shuffle", "register_projector", "register_vision_model"]
