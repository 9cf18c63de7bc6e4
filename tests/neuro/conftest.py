"""Fixtures for the neuro plugin tests: where nibabel's and pydicom's shipped test volumes live, and a minimal
chat-config stand-in (``vision_config`` + ``projector`` + ``llm_config``) for readers and projectors."""
from __future__ import annotations

import types
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def nib_data() -> Path:
    import nibabel

    # nibabel.testing.data_path; importing nibabel.testing pulls pytest helpers, so use the same folder directly
    path = Path(nibabel.__file__).parent / "tests" / "data"
    if not (path / "anatomical.nii").exists():
        pytest.skip(f"nibabel test data not installed at {path}")
    return path


@pytest.fixture(scope="session")
def dicom_dirs() -> Path:
    import pydicom.data

    path = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"
    if not (path / "98892001" / "CT5N").is_dir():
        pytest.skip(f"pydicom's dicomdirtests series not installed at {path}")
    return path


def chat_config(vision_config, projector: str = "mlp", projector_config: dict | None = None, llm_hidden: int = 32):
    """The attributes readers, ``token_count`` and projectors read from an ``InternVLChatConfig``."""
    return types.SimpleNamespace(vision_config=vision_config, projector=projector,
                                 projector_config=projector_config or {},
                                 llm_config=types.SimpleNamespace(hidden_size=llm_hidden),
                                 downsample_ratio=0.5, ps_version="v2")


@pytest.fixture
def make_chat_config():
    return chat_config


@pytest.fixture(scope="session")
def neuro_studies(tmp_path_factory) -> Path:
    """Synthetic studies in NeuroVFM's layout (6 train + 3 val, from the demo generator; a few seconds)."""
    from patches.neuro.train.demo_data import build

    return Path(build(str(tmp_path_factory.mktemp("neuro_studies") / "demo"), n_train=6, n_val=3, seed=1))
