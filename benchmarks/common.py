"""Helpers shared by the benchmark scripts: timing and writing results."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax


def best_time(fn, repeats: int = 5) -> float:
    """Shortest wall time of `fn()` over `repeats` calls, after one warm-up call (compilation).

    The minimum, not the mean: other load on a shared machine only ever adds time.
    """
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def write_result(result: dict, name: str, out: Path | None = None) -> Path:
    """Write `result` as JSON to `out`, or to `benchmarks/results/<name>_<platform>.json`."""
    out = out or Path(__file__).parent / "results" / f"{name}_{jax.devices()[0].platform}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return out
