"""``python -m patches.neuro.bench`` runs on small volumes and reports every phase, header sizing included (its
own check: the sized shape equals the loaded one)."""
from __future__ import annotations

from patches.neuro import bench


def test_bench_runs_every_phase(tmp_path):
    res = bench.run(n=2, size=(40, 48, 40), shape=(32, 32, 32), spacing=1.5, workdir=str(tmp_path))
    for phase in ("raw", "cache_fill", "cached", "sizing"):
        assert res[f"{phase}_volumes_per_s"] > 0, phase
    assert res["out_shape"] == [32, 32, 32]
