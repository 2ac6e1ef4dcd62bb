"""Time and peak memory of `describe` for every pythia preset at 4096 tokens, for the plain,
looped, SpiralFormer-B and -L layouts. Each row runs in a fresh process so its peak RSS is
its own (torch and fvcore imports included); the one-time start-up of a fresh process is
reported apart from the row's time. Target: every row under 2 s and 1 GB.

    .venv/bin/python benchmarks/bench_count.py   # writes benchmarks/results/count.json
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from fresh import in_fresh_process, peak_rss_mb, warm_describe

PRESETS = ["pythia-160m", "pythia-410m", "pythia-1b", "pythia-1.4b"]
PLAIN = {"pythia-160m": "12", "pythia-410m": "24", "pythia-1b": "16", "pythia-1.4b": "24"}
LAYOUTS = {
    "looped": "2+4x{1,1}+2",
    "spiral-B": "2+4x{1/8,1/4,1/2,1}+2",
    "spiral-L": "4+4x{1/16,1/8,1/4,1/2}+4",
}
SEQ_LEN = 4096
OUT = Path(__file__).parent / "results" / "count.json"


def _row(preset: str, layout: str, spec: str, queue) -> None:
    describe, startup = warm_describe()
    t0 = time.perf_counter()
    r = describe(spec, preset, seq_len=SEQ_LEN)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    describe(spec, preset, seq_len=SEQ_LEN)
    again = time.perf_counter() - t0
    queue.put(dict(preset=preset, layout=layout, spec=spec, process_startup_s=round(startup, 3),
                   seconds=round(first, 3), seconds_again=round(again, 3),
                   peak_rss_mb=peak_rss_mb(),
                   flops_forward=r["flops_forward"],
                   exact=r["flops_forward"] == r["flops_forward_analytic"],
                   params_total=r["params_total"]))


def main() -> None:
    rows = []
    for preset in PRESETS:
        for layout, spec in {"plain": PLAIN[preset], **LAYOUTS}.items():
            r = in_fresh_process(_row, preset, layout, spec)
            rows.append(r)
            print(f"{preset:12s} {layout:9s} {r['seconds']:6.2f}s ({r['seconds_again']:.2f}s "
                  f"again, {r['process_startup_s']:.2f}s process start-up) "
                  f"{r['peak_rss_mb']:6.0f} MB peak RSS  exact={r['exact']}")
    ok = all(r["seconds"] < 2 and r["peak_rss_mb"] < 1024 for r in rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dict(seq_len=SEQ_LEN, machine=platform.platform(),
                                   processor=platform.processor(), target_met=ok, rows=rows),
                              indent=2) + "\n")
    print(f"target (<2 s, <1 GB every row) met: {ok}; wrote {OUT}")


if __name__ == "__main__":
    main()
