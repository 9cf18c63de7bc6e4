"""Vision encoders: the contract and registry (``base``) and the core's default encoder (``intern_vit``)."""
from internvl.model.vision import intern_vit  # noqa: F401  (registers "intern_vit")
from internvl.model.vision.base import (VISION_MODELS, VisionEncoder, create_vision_model,
                                        create_vision_model_from_dict, encoder_class, encoder_factory,
                                        list_vision_models, register_vision_model)

__all__ = ["VISION_MODELS", "VisionEncoder", "create_vision_model", "create_vision_model_from_dict",
           "encoder_class", "encoder_factory", "list_vision_models", "register_vision_model"]
