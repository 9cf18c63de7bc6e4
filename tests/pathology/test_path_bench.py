"""The benchmark runs end to end on a small generated slide and prints its one table (numbers not asserted:
they depend on the machine; only that every row measured the same coordinates, and GPU rows say why not)."""
from __future__ import annotations

import openslide
import torch

from patches.pathology import bench


def test_bench_table_on_a_small_generated_slide(tmp_path, capsys):
    assert bench.main(["--size", "2048", "--cache-dir", str(tmp_path), "--max-tiles", "12", "--repeat", "1",
                       "--workers", "0", "1", "--e2e-workers", "0", "--json", str(tmp_path / "r.json")]) == 0
    slide = openslide.OpenSlide(str(tmp_path / "bench_2048px_0.5mpp.tiff"))
    assert slide.level_dimensions[0] == (2048, 2048) and float(slide.properties["openslide.mpp-x"]) == 0.5
    assert len(slide.level_dimensions) == 4  # 1, 4, 16, 64 (the generated pyramid)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    names = [r.split("|")[1].strip() for r in rows]
    assert names[:3] == ["openslide read_region (bare loop)", "our reader, 0 workers", "our reader, 1 workers"]
    assert [r.split("|")[2].strip() for r in rows[:3]] == ["12", "12", "12"]  # same coordinates in every row
    assert names[3] == "end-to-end, tiny encoder on CPU, 0 workers"
    if not torch.cuda.is_available():
        assert sum("not measured (no GPU)" in r for r in rows) == 2
