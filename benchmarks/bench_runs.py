"""Scale of the run reader on a synthetic token-level run written in prime-rl's token-export format.

Writes `token_exports/step_<N>/rank_<R>.jsonl` + `STABLE` as src/prime_rl/trainer/rl/token_export.py (prime-rl
559b447) does: every column of SCHEMA_VERSION 1, per-token lists over the whole sample, `null` lists for the
columns a run lacks, `json.dumps(record, separators=(",", ":"))` per line; 2 ranks per step. The step contents
drift over training (entropy falls, the sampler-trainer gap grows) so the trends and findings have something to show.
Then measures, in a fresh process per figure where it matters:
- time to the first trend points (the summary's first progress callback), with progress;
- first-pass read throughput (dump bytes / wall seconds of the whole summary pass) and per CPU-second;
- a second open from the saved summary, every trend column drawn as a plotly figure (serialised as the page sends it);
- opening a step (the middle one and the last one);
- peak resident memory of the process.

    nice python benchmarks/bench_runs.py --steps 100 1000 [--samples 64] [--tokens 512] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TEMPLATES = 8
RANKS = 2


def _record(rng, step_phase: float, prompt: list[int], n: int, rank: int, idx: int) -> dict:
    T = len(prompt) + n
    mask = [False] * len(prompt) + [True] * n
    inf = -np.abs(rng.normal(0.6, 0.5, T)).astype(np.float32)
    trainer = (inf + rng.normal(0, 0.005 + 0.05 * step_phase, T)).astype(np.float32)
    log_ratio = trainer - inf
    ratio = np.exp(log_ratio)
    f = lambda a: [float(x) for x in a]  # noqa: E731
    return {"schema_version": 1, "step": 0, "rank": rank, "micro_step": idx // 8, "micro_sequence_idx": idx % 8,
            "export_sequence_idx": idx, "env_name": "math",
            "token_ids": prompt + rng.integers(3, 49000, n - 1).tolist() + [2], "position_ids": list(range(T)),
            "loss_mask": mask, "advantages": [float(rng.normal())] * T, "inference_logprobs": f(inf),
            "trainer_logprobs": f(trainer), "entropy": f(np.abs(rng.normal(1.5 * (1 - 0.7 * step_phase), 0.3, T))),
            "mismatch_kl": f(ratio - log_ratio - 1), "log_importance_ratio": f(log_ratio), "importance_ratio": f(ratio),
            "prob_delta": f(np.exp(trainer) - np.exp(inf)), "is_masked": [False] * T, "is_masked_high": [False] * T,
            "is_masked_low": [False] * T, "rl_weights": [None] * T, "ce_weights": [None] * T, "ref_kl_weights": [None] * T}


def _templates(samples: int, tokens: int) -> list[list[bytes]]:
    """TEMPLATES step contents (each: one bytes blob per rank), from early to late training."""
    rng = np.random.default_rng(0)
    out = []
    for t in range(TEMPLATES):
        per_rank = []
        for rank in range(RANKS):
            lines = []
            for i in range(samples // RANKS):
                g = (rank * samples // RANKS + i) // 8
                prompt = [1, 100 + g, 200 + g] + list(range(300, 361))  # 64 prompt tokens
                lines.append(json.dumps(_record(rng, t / (TEMPLATES - 1), prompt, tokens - len(prompt), rank, i),
                                        separators=(",", ":"), allow_nan=False) + "\n")
            per_rank.append("".join(lines).encode())
        out.append(per_rank)
    return out


def write_run(folder: Path, steps: int, samples: int, tokens: int) -> int:
    """Write the run; return its size in bytes."""
    blobs = _templates(samples, tokens)
    size = 0
    for k in range(1, steps + 1):
        d = folder / "token_exports" / f"step_{k}"
        d.mkdir(parents=True, exist_ok=True)
        for rank, blob in enumerate(blobs[min(TEMPLATES - 1, (k - 1) * TEMPLATES // steps)]):
            data = blob.replace(b'"step":0,', f'"step":{k},'.encode())
            (d / f"rank_{rank}.jsonl").write_bytes(data)
            size += len(data)
        (d / "STABLE").touch()
    return size


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _warm_imports() -> None:
    """What a running app has loaded already: the libraries, not the run (the clocks start after this)."""
    import pandas  # noqa: F401
    import plotly.graph_objects  # noqa: F401
    import pyarrow.json  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import inspector.diagnostics.run  # noqa: F401
    import inspector.sources.runs  # noqa: F401


def measure_first_pass(folder: str) -> dict:
    _warm_imports()
    from inspector.sources.runs import open_run

    start, cpu0 = time.perf_counter(), time.process_time()
    run = open_run(folder)
    marks = {}

    def progress(done, total, row):
        if done == 1:
            marks["first"], marks["first_cpu"] = time.perf_counter() - start, time.process_time() - cpu0
        if done in (10, total // 2, total):
            print(f"    ... {done}/{total} steps read, {time.perf_counter() - start:.1f} s", file=sys.stderr)

    frame = run.summary(progress=progress)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    from inspector.diagnostics.run import run_findings

    return {"first_points_s": marks.get("first"), "first_points_cpu_s": marks.get("first_cpu"), "pass_s": wall, "pass_cpu_s": cpu, "rows": len(frame),
            "findings": [f.code for f in run_findings(frame)], "peak_rss_mb": _peak_mb()}


def measure_second_open(folder: str) -> dict:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from inspector.sources.runs import open_run

    _warm_imports()
    start, cpu = time.perf_counter(), time.process_time()
    run = open_run(folder)
    frame = run.summary()
    trends = [c for c in frame.columns if c != "step"]
    fig = make_subplots(rows=len(trends), cols=1, shared_xaxes=True, subplot_titles=trends)
    for i, c in enumerate(trends, start=1):
        fig.add_trace(go.Scatter(x=frame["step"], y=frame[c], name=c, mode="lines"), row=i, col=1)
    assert len(fig.to_json()) > 0   # what the page sends to the browser
    drawn, drawn_cpu = time.perf_counter() - start, time.process_time() - cpu
    steps = run.steps()
    times = {}
    for n in (steps[len(steps) // 2], steps[-1]):
        t, c = time.perf_counter(), time.process_time()
        s = run.step(n)
        assert s.samples > 0
        times[n] = (time.perf_counter() - t, time.process_time() - c)
    return {"second_open_draw_s": drawn, "second_open_cpu_s": drawn_cpu, "trends": len(trends), "step_open_s": times,
            "peak_rss_mb": _peak_mb()}


def _child(fn: str, folder: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", fn, folder], capture_output=True, text=True, check=True,
                         env=os.environ)
    sys.stderr.write(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--dir", default=None, help="where to write the runs (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        fn, folder = args.child
        print(json.dumps({"first": measure_first_pass, "second": measure_second_open}[fn](folder), default=str))
        return 0
    base = Path(args.dir or tempfile.mkdtemp(prefix="bench-runs-"))
    os.environ["INSPECTOR_RUN_SUMMARIES"] = str(base / "summaries")
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for steps in args.steps:
        folder = base / f"run-{steps}"
        shutil.rmtree(folder, ignore_errors=True)
        t = time.perf_counter()
        size = write_run(folder, steps, args.samples, args.tokens)
        print(f"\n{steps} steps x {args.samples} completions x {args.tokens} tokens, prime-rl token exports: "
              f"dump {size / 1e6:.0f} MB ({size / steps / 1e6:.2f} MB per step), written in {time.perf_counter() - t:.0f} s")
        first = _child("first", str(folder))
        second = _child("second", str(folder))
        print(f"  first trend points after {first['first_points_s']:.2f} s wall, {first['first_points_cpu_s']:.2f} s CPU "
              "(goal < 2 s)")
        print(f"  first pass: {first['pass_s']:.1f} s wall, {first['pass_cpu_s']:.1f} s CPU -> "
              f"{size / 1e6 / first['pass_s']:.0f} MB/s wall, {size / 1e6 / first['pass_cpu_s']:.0f} MB per CPU-second "
              f"(goal >= 100 MB/s); findings: {', '.join(first['findings']) or 'none'}")
        print(f"  second open from the saved summary, {second['trends']} trends drawn: {second['second_open_draw_s']:.2f} s "
              f"wall, {second['second_open_cpu_s']:.2f} s CPU (goal < 1 s)")
        print("  step open: " + ", ".join(f"step {n} {w:.2f} s wall / {c:.2f} s CPU"
                                          for n, (w, c) in second["step_open_s"].items()) + " (goal < 1 s)")
        print(f"  peak RSS: first pass {first['peak_rss_mb']:.0f} MB, second open {second['peak_rss_mb']:.0f} MB (goal < 1 GB)")
        print(f"  load average now: {os.getloadavg()[0]:.1f}")
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if not args.keep and not args.dir:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
