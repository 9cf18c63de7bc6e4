"""Fixtures for the neuro plugin tests (nibabel's and pydicom's shipped volumes: ``tests/conftest.py``): a minimal
chat-config stand-in (``vision_config`` + ``projector`` + ``llm_config``) for readers and projectors."""
from __future__ import annotations

import types
from pathlib import Path

import pytest


def chat_config(vision_config, projector: str = "mlp", projector_config: dict | None = None, llm_hidden: int = 32):
    """The attributes readers, projectors and ``num_context_tokens`` read from an ``InternVLChatConfig``."""
    from internvl.model.projector import PROJECTORS
    from internvl.model.vision.base import encoder_class

    ns = types.SimpleNamespace(vision_config=vision_config, projector=projector,
                               projector_config=projector_config or {},
                               llm_config=types.SimpleNamespace(hidden_size=llm_hidden),
                               downsample_ratio=0.5, ps_version="v2")
    ns.num_context_tokens = lambda item, kind=None: PROJECTORS.get(projector).num_output_tokens(
        ns, encoder_class(vision_config).num_tokens(vision_config, item))
    return ns


@pytest.fixture
def make_chat_config():
    return chat_config


@pytest.fixture(scope="session")
def neuro_studies(tmp_path_factory) -> Path:
    """Synthetic studies in NeuroVFM's layout (6 train + 3 val, from the demo generator; a few seconds)."""
    from patches.neuro.train.demo_data import build

    return Path(build(str(tmp_path_factory.mktemp("neuro_studies") / "demo"), n_train=6, n_val=3, seed=1))
