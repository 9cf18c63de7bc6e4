"""Neuro vision encoders (registered on import): ``brain3d_vit*`` (3D/4D ViT) and ``neurovfm_tokens*``."""
from patches.neuro.encoders import brain3d_vit, neurovfm_tokens  # noqa: F401  (registration)
