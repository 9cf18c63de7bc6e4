"""The results of ``bench_train``: per-way rates after warm-up, the table, the JSON and the bar chart.

Rates are over the steps after the first ``warmup`` of each way: real tokens/s = non-padding tokens / wall
seconds of those steps, samples/s likewise. Padding share covers every step of the epoch (it is a property of
the batches, not of the timing): from the sample lengths for padded batches (``bench_data.padded_batches``), or
as the packed run reports it. ``tokens_check`` says whether the real tokens a run counted per step equal the
ones the lengths predict (a different order or batching would show here).
"""
from __future__ import annotations

import statistics
from pathlib import Path

from internvl.tools.bench_data import BatchStats, padded_batches, total

COLUMNS = (("way", "{}"), ("steps", "{}"), ("real tok/s", "{:.0f}"), ("runs tok/s", "{}"), ("samples/s", "{:.2f}"),
           ("padding", "{:.1%}"), ("peak MiB", "{:.0f}"), ("ms/step", "{:.1f}"), ("first loss", "{:.4f}"))


def summarise(way: str, result: dict, warmup: int, lengths: list[int] | None, batch_size: int) -> dict:
    steps = result["steps"]
    timed = steps[warmup:]
    seconds = sum(s["seconds"] for s in timed)
    row = {"way": way, "steps": len(steps), "timed_steps": len(timed),
           "real_tokens_per_s": sum(s["tokens"] for s in timed) / seconds,
           "samples_per_s": sum(s["samples"] for s in timed) / seconds,
           "median_step_ms": 1000 * statistics.median(s["seconds"] for s in timed),
           "real_tokens": sum(s["tokens"] for s in steps), "samples": sum(s["samples"] for s in steps),
           "losses": [s["loss"] for s in steps],
           "peak_mib": result.get("cuda_peak_mib", result["peak_rss_mib"]),
           "peak_kind": "cuda max_memory_allocated" if "cuda_peak_mib" in result else "max RSS of the process",
           "peak_rss_subprocesses_mib": result.get("peak_rss_subprocesses_mib"),
           "process_seconds": result.get("process_seconds")}
    if "prep_seconds" in result:
        row["prep_ms_per_sample"] = 1000 * result["prep_seconds"] / max(result["prep_samples"], 1)
    if way == "packed":
        row.update(packed_padding(steps))
    elif lengths is not None:
        batches = padded_batches(lengths, batch_size, steps=len(steps))
        row["padding_share"] = total(batches).padding_share
        predicted = [b.real_tokens for b in batches]
        counted = [s["tokens"] for s in steps]
        row["tokens_check"] = "ok" if predicted == counted else f"mismatch: lengths say {predicted[:5]}..., " \
                                                                 f"the run counted {counted[:5]}..."
        logged = [s["padding_share"] for s in steps if "padding_share" in s]
        if logged:  # ours logs its own per-step padding share: it must agree with the lengths (4 decimals)
            agree = len(logged) == len(batches) and all(abs(round(b.padding_share, 4) - p) < 1e-4
                                                         for b, p in zip(batches, logged))
            row["logged_padding_check"] = "ok" if agree else "mismatch with the lengths"
    return row


def median_run(runs: list[dict]) -> dict:
    """Of several runs of one way, the one with the median real tokens/s (the lower middle one for an even
    count), with every run's rate kept under ``runs_real_tokens_per_s``."""
    ordered = sorted(runs, key=lambda r: r["real_tokens_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs_real_tokens_per_s"] = [r["real_tokens_per_s"] for r in runs]
    return chosen


def packed_padding(steps: list[dict]) -> dict:
    """Padding share of a packed run from what it logged per step (``padding_share`` with its real tokens)."""
    if not steps or any("padding_share" not in s for s in steps):
        return {"padding_share": None, "tokens_check": "the packed run logged no padding_share"}
    stats = total([BatchStats(real_tokens=s["tokens"], slots=round(s["tokens"] / (1 - s["padding_share"])),
                              samples=s["samples"]) for s in steps])
    return {"padding_share": stats.padding_share, "tokens_check": "from the run's log"}


RATIOS = (("packed/unpacked", "packed", "unpacked"), ("unpacked/plain", "unpacked", "plain"),
          ("unpacked/plain_lazy", "unpacked", "plain_lazy"))


def ratios(rows: dict[str, dict]) -> dict[str, float]:
    """Real tokens/s of one way over another's: the median of the round-by-round ratios (``paired_ratios``; with
    one run each, the plain ratio). Robust to the load of other work changing between rounds, which a ratio of
    the ways' median runs is not."""
    return {name: statistics.median(values) for name, values in paired_ratios(rows).items()}


def paired_ratios(rows: dict[str, dict]) -> dict[str, list[float]]:
    """The same ratios round by round (run i of one way over run i of the other, which ran minutes apart and so
    under similar load from other work on a shared machine)."""
    return {name: [x / y for x, y in zip(rows[a]["runs_real_tokens_per_s"], rows[b]["runs_real_tokens_per_s"])]
            for name, a, b in RATIOS if a in rows and b in rows}


def format_table(rows: dict[str, dict], skipped: dict[str, str]) -> str:
    header = [name for name, _ in COLUMNS]
    lines = []
    for row in rows.values():
        runs = row.get("runs_real_tokens_per_s", [row["real_tokens_per_s"]])
        values = [row["way"], f"{row['timed_steps']}/{row['steps']}", row["real_tokens_per_s"],
                  f"{min(runs):.0f}-{max(runs):.0f}",
                  row["samples_per_s"], row["padding_share"], row["peak_mib"], row["median_step_ms"],
                  row["losses"][0]]
        lines.append([("n/a" if v is None else fmt.format(v)) for (_, fmt), v in zip(COLUMNS, values)])
    widths = [max([len(h)] + [len(line[i]) for line in lines]) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    out += [f"{way}: {why}" for way, why in skipped.items()]
    return "\n".join(out)


def plot(rows: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ways = list(rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    rates = [rows[w]["real_tokens_per_s"] for w in ways]
    runs = [rows[w].get("runs_real_tokens_per_s", [r]) for w, r in zip(ways, rates)]
    ax1.bar(ways, rates, color="#4c72b0", yerr=[[r - min(x) for r, x in zip(rates, runs)],
                                                 [max(x) - r for r, x in zip(rates, runs)]], capsize=4)
    ax1.set_ylabel("real (non-pad) tokens / s\n(median run; bars: all runs)")
    ax2.bar(ways, [100 * (rows[w]["padding_share"] or 0) for w in ways], color="#dd8452")
    ax2.set_ylabel("padding share (%)")
    for ax in (ax1, ax2):
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


__all__ = ["format_table", "median_run", "paired_ratios", "plot", "ratios", "summarise"]
