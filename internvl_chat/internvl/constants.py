"""Token strings, label constants and normalisation statistics shared by the data pipeline and the model.

The nine special tokens and their order are InternVL's (the order they are added to a tokenizer decides their
ids, so keep it). The normalisation statistics are the ones InternVL's ``build_transform`` accepts through
``normalize_type``.
"""
from __future__ import annotations

IGNORE_INDEX = -100  # label value that the loss ignores

IMAGE_PLACEHOLDER = "<image>"  # what annotations write; expanded before tokenisation, never tokenised itself
IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"
QUAD_START_TOKEN = "<quad>"
QUAD_END_TOKEN = "</quad>"
REF_START_TOKEN = "<ref>"
REF_END_TOKEN = "</ref>"
BOX_START_TOKEN = "<box>"
BOX_END_TOKEN = "</box>"

# InternVL's add order (ids follow it when a tokenizer gains them)
SPECIAL_TOKENS = (IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN, QUAD_START_TOKEN, QUAD_END_TOKEN,
                  REF_START_TOKEN, REF_END_TOKEN, BOX_START_TOKEN, BOX_END_TOKEN)
# tokens that only the image expansion may produce; raw annotation text must not contain them
RESERVED_IMAGE_TOKENS = (IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.4814546, 0.4578275, 0.40821073)
CLIP_STD = (0.2686295, 0.2613025, 0.2757711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

NORMALIZE_STATS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": (CLIP_MEAN, CLIP_STD),
    "siglip": (SIGLIP_MEAN, SIGLIP_STD),
}
