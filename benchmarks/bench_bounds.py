"""What the bounds of spiralsearch/limits.py buy: how fast a spec past them is refused, and the
time and peak memory of `describe` for the largest specs inside them. Each row runs in a
fresh process so its peak RSS is its own; process start-up (imports, the first meta-device
op) is reported apart. Target: a refusal in milliseconds, every describe under 10 s and 1 GB.

    .venv/bin/python benchmarks/bench_bounds.py   # writes benchmarks/results/bounds.json
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from fresh import in_fresh_process, peak_rss_mb, warm_describe

OUT = Path(__file__).parent / "results" / "bounds.json"
WIDE = dict(d_model=1 << 16, n_heads=1024, mlp_ratio=16.0, vocab_size=1 << 20)
ROWS = {
    # every block, iteration count, chunk and the decode period at its bound; widths too
    "every bound": ("512+512x{" + ",".join(["1/65536@65535", "1/256", "1/4096"] * 85 + ["1"])
                    + "}+512", 1 << 20, WIDE),
    "deepest stored": ("512+512x{1}+512", 4096, {}),
    "most iterations": ("1+1x{" + ",".join(["1/2"] * 256) + "}+1", 4096, {}),
    "longest period": ("2+2x{1/65536,1/32768,1/16}+2", 1 << 20, {}),
    "traced (64 unrolled)": ("8+8x{1/8,1/4,1/2,1/2,1/2,1}+8", 4096, {}),
}
REFUSED = ["2+1000000000x{1}+2", "1" * 5000, "2+2x{1/7919,1/7907}+2",
           "1+1x{" + ",".join(["1"] * 300) + "}+1"]


def _row(name: str, spec: str, seq_len: int, options: dict, queue) -> None:
    describe, startup = warm_describe()
    t0 = time.perf_counter()
    r = describe(spec, "tiny", seq_len=seq_len, **options)
    seconds = time.perf_counter() - t0
    queue.put(dict(name=name, spec=spec if len(spec) < 80 else f"{spec[:60]}... ({len(spec)} "
                   "chars)", seq_len=seq_len, options=options, seconds=round(seconds, 3),
                   process_startup_s=round(startup, 3),
                   peak_rss_mb=peak_rss_mb(),
                   traced=r["flops_traced"], unrolled_depth=r["unrolled_depth"],
                   period=r["decode"]["period"], params_total=r["params_total"]))


def _refusals() -> list[dict]:
    """In-process `spiralsearch describe SPEC` on specs past the bounds, parser warm."""
    import contextlib
    import io

    from spiralsearch.cli import main

    with contextlib.redirect_stderr(io.StringIO()):
        main(["describe", "x"])  # builds the parser once
    out = []
    for spec in REFUSED:
        err = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(err):
            code = main(["describe", spec])
        out.append(dict(spec=spec if len(spec) < 80 else f"{spec[:20]}... ({len(spec)} chars)",
                        exit=code, ms=round(1000 * (time.perf_counter() - t0), 2),
                        error=err.getvalue().strip()[:160]))
    return out


def main() -> None:
    refusals = _refusals()
    for r in refusals:
        print(f"refused in {r['ms']:7.2f} ms (exit {r['exit']}): {r['spec'][:50]}")
    rows = []
    for name, (spec, seq_len, options) in ROWS.items():
        r = in_fresh_process(_row, name, spec, seq_len, options)
        rows.append(r)
        print(f"{name:22s} {r['seconds']:6.2f} s ({r['process_startup_s']:.2f} s start-up) "
              f"{r['peak_rss_mb']:6.0f} MB peak RSS, traced={r['traced']}, "
              f"unrolled {r['unrolled_depth']:,}, period {r['period']:,}")
    ok = (all(r["exit"] == 2 and r["ms"] < 50 for r in refusals)
          and all(r["seconds"] < 10 and r["peak_rss_mb"] < 1024 for r in rows))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dict(machine=platform.platform(), processor=platform.processor(),
                                   target_met=ok, refusals=refusals, rows=rows), indent=2)
                   + "\n")
    print(f"target (refusals < 50 ms, describe < 10 s and < 1 GB) met: {ok}; wrote {OUT}")


if __name__ == "__main__":
    main()
