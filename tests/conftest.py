"""Shared fixtures: the embedded tiny model, built once per test session into a temporary folder (never the
user's ``pretrained/``), and the optional real-slide fixtures in ``../shared/fixtures``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer than ~20 s and also covered by a demo script")
    config.addinivalue_line("markers", "kill: the slowest reliability tests (SIGKILL and relaunch); they run in CI")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """``pretrained/build_tiny.py`` output (tiny intern_vit + Qwen2 + BPE tokenizer), built fresh for the session."""
    out = tmp_path_factory.mktemp("tiny") / "InternVL-tiny"
    res = subprocess.run([sys.executable, str(REPO / "pretrained" / "build_tiny.py"), "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"pretrained/build_tiny.py failed:\n{res.stderr[-3000:]}")
    return out


@pytest.fixture(scope="session")
def wsi_fixtures() -> Path:
    path = SHARED_FIXTURES / "wsi"
    if not path.is_dir():
        pytest.skip(f"real-slide fixtures not present at {path} (they live in ../shared, absent in user clones)")
    return path


@pytest.fixture(scope="session")
def nib_data() -> Path:
    """nibabel's shipped test volumes (``nibabel/tests/data``)."""
    import nibabel

    # nibabel.testing.data_path; importing nibabel.testing pulls pytest helpers, so use the same folder directly
    path = Path(nibabel.__file__).parent / "tests" / "data"
    if not (path / "anatomical.nii").exists():
        pytest.skip(f"nibabel test data not installed at {path}")
    return path


@pytest.fixture(scope="session")
def dicom_dirs() -> Path:
    """pydicom's shipped DICOM series (``dicomdirtests``: clean CT5N, gapped CT2, ...)."""
    import pydicom.data

    path = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"
    if not (path / "98892001" / "CT5N").is_dir():
        pytest.skip(f"pydicom's dicomdirtests series not installed at {path}")
    return path
