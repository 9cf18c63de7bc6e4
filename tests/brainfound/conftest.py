"""Fixtures of the Brainfound plugin tests: one torch thread while they run, synthetic demo data, and a tiny
stage-1 run shared by the generation and stage-2 tests. ``@pytest.mark.slow`` tests here (each also covered by
``shell/brainfound/demo.sh``) run only with ``-m slow`` or ``BRAINFOUND_SLOW=1``."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bf_helpers import one_thread, tiny_ddpm_config

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if os.environ.get("BRAINFOUND_SLOW") == "1" or "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow (covered by shell/brainfound/demo.sh); run with -m slow or BRAINFOUND_SLOW=1")
    for item in items:
        if "slow" in item.keywords and HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def bf_demo(tmp_path_factory) -> dict[str, Path]:
    from patches.brainfound import demo

    out = tmp_path_factory.mktemp("bf_demo")
    return {"root": out, **{k: Path(v) for k, v in demo.build(out, seed=0).items()}}


@pytest.fixture(scope="session")
def bf_stage1(tmp_path_factory, bf_demo) -> dict:
    """A 24-step tiny DDPM run (in-process): its result dict and output dir."""
    from patches.brainfound import pretrain_ddpm

    tmp = tmp_path_factory.mktemp("bf_stage1")
    cfg = tiny_ddpm_config(tmp, bf_demo["stage1_manifest"], max_steps=24, save_steps=12, log_steps=4)
    with one_thread():
        result = pretrain_ddpm.main(["--config", str(cfg)])
    return {**result, "dir": Path(result["output_dir"]), "config": cfg}
