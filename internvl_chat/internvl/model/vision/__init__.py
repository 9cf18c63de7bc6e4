"""Vision encoders: the contract and registry (``base``) and the core's default encoder (``intern_vit``)."""
from internvl.model.vision import intern_vit  # noqa: F401  (registers "intern_vit")
from internvl.model.vision.base import (META_KEYS, VISION_MODELS, EncoderSpec, VisionEncoder, create_vision_model,
                                        create_vision_model_from_dict, encoder_class, list_vision_models,
                                        register_vision_model, vision_config_from_dict, vision_config_to_dict,
                                        vision_model_spec)

__all__ = ["META_KEYS", "VISION_MODELS", "EncoderSpec", "VisionEncoder", "create_vision_model",
           "create_vision_model_from_dict", "encoder_class", "list_vision_models", "register_vision_model",
           "vision_config_from_dict", "vision_config_to_dict", "vision_model_spec"]
