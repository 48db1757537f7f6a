"""What a full inspection costs, side by side with bare generation and with the TRL pipeline.

Each measurement runs in a fresh subprocess (models loaded, code paths warmed up, then one timed run with
its peak RSS growth sampled every 2 ms), and the sides alternate: bare, inspect, trl, bare, inspect, ...
The median of the repetitions is reported, with the machine it ran on.

    python benchmarks/bench_inspection.py [--reps 3] [--batch 8] [--tokens 128] [--greedy]

The inspect side also prints the time of each pass after generation (recompute, reference, value, reward,
decoding, diagnostics, PPO step, views), so one can see where the time over bare generate goes.

Sides, on the same prompts, seed and sampling settings (temperature 0.7, top_k 0, top_p 1.0; `--greedy`: greedy
decoding, as the inspection goal is stated):
- bare: `model.generate` with nothing kept (the physical floor);
- inspect: `run_rollout` (generation with the per-token capture, the recompute, value and reward passes),
  the diagnostics, the PPO step and every view the page builds;
- trl: TRL's way: `generate(output_scores=True)`, the stacked scores' logprobs, a reference forward pass,
  a value pass on query_responses and a reward pass on postprocessed_query_responses (TRL's get_reward).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "Write a long story about a dragon who learns to bake bread.",
    "Describe, in detail, a day in the life of a lighthouse keeper.",
    "Explain how a bicycle works to a ten-year-old.",
    "Write a letter to a friend about your summer holidays.",
    "List the steps to plant a vegetable garden, with explanations.",
    "Tell me about the history of the printing press.",
    "Write a review of an imaginary restaurant by the sea.",
    "Describe a rainy afternoon in a big city.",
    "Write a poem about the moon and the tides.",
    "Explain why the sky is blue.",
    "Describe your favourite book and why you love it.",
    "Write a short speech for a school graduation.",
    "Tell a story about a robot who wants to become a gardener.",
    "Describe a journey on a night train.",
    "Explain how bread rises.",
    "Write a diary entry of an astronaut on the moon.",
]


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the process's resident memory every 2 ms while the block runs."""

    def __enter__(self):
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.base


def child(side: str, batch: int, tokens: int, greedy: bool = False) -> dict:
    """One measurement (runs inside the subprocess)."""
    sys.path.insert(0, str(ROOT))
    import torch
    from transformers import GenerationConfig

    from inspector import load_models, run_rollout
    from inspector.diagnostics import diagnose
    from inspector.sources.generation import encode_prompts
    from inspector.trainers.ppo import rollout_ppo_step
    from inspector import views

    models = load_models()
    tok = models.tokenizer
    prompts = PROMPTS[:batch]
    sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=0.7, top_k=0, top_p=1.0)
    temperature = 1.0 if greedy else 0.7  # what the trainer divides the logits by
    settings = dict(max_new_tokens=tokens, seed=0, **sampling)

    def bare():
        enc = encode_prompts(tok, prompts)
        mask = enc.queries != tok.pad_token_id
        torch.manual_seed(0)
        with torch.no_grad():
            out = models.policy.generate(
                input_ids=torch.masked_fill(enc.queries, ~mask, 0), attention_mask=mask.long(),
                generation_config=GenerationConfig(max_new_tokens=tokens, pad_token_id=tok.pad_token_id,
                                                   eos_token_id=tok.eos_token_id, **sampling),
            )
        return out.shape[1] - enc.queries.shape[1]

    stages: dict[str, float] = {}

    def inspect():
        r = run_rollout(models, prompts, **settings)
        stages.clear()
        stages.update({k: v for k, v in r.timings.items() if k != "total"})
        t0 = time.perf_counter()
        diagnose(r)
        stages["diagnostics"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        step = rollout_ppo_step(r)
        stages["ppo step"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        views.sequences_html(r)
        views.logprob_heatmap(r).to_json()
        views.entropy_heatmap(r).to_json()
        views.logprob_gap_figure(r).to_json()
        views.logprob_agreement_markdown(r)
        views.stops_table(r)
        views.batch_table(r)
        views.split_html(r, 0)
        views.value_reward_html(r, 0)
        views.values_figure(r, 0).to_json()
        views.ppo_rows_html(r, step, 0)
        stages["views"] = time.perf_counter() - t0
        return r.response_width

    def trl():
        from trl.experimental.utils import first_true_indices, get_reward

        from inspector import truncate_response

        enc = encode_prompts(tok, prompts)
        queries, pad = enc.queries, tok.pad_token_id
        context_length = queries.shape[1]
        mask = queries != pad
        torch.manual_seed(0)
        with torch.no_grad():
            output = models.policy.generate(
                input_ids=torch.masked_fill(queries, ~mask, 0), attention_mask=mask.long(),
                generation_config=GenerationConfig(max_new_tokens=tokens, pad_token_id=pad, eos_token_id=tok.eos_token_id,
                                                   return_dict_in_generate=True, output_scores=True, **sampling),
            )
            responses = output.sequences[:, context_length:]
            query_responses = torch.cat((queries, responses), 1)
            logits = torch.stack(output.scores, 1)
            logprobs = torch.log_softmax(logits, -1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)
            del logits
            qr_mask = query_responses != pad
            ref_out = models.reference(
                input_ids=torch.masked_fill(query_responses, ~qr_mask, 0), attention_mask=qr_mask,
                position_ids=qr_mask.cumsum(1) - qr_mask.long(), return_dict=True,
            )
            ref_logits = ref_out.logits[:, context_length - 1 : -1] / (temperature + 1e-7)
            ref_logprobs = torch.log_softmax(ref_logits, -1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)
            del ref_out, ref_logits
            postprocessed = truncate_response(tok.eos_token_id, pad, responses)
            full_value, _, _ = get_reward(models.value, query_responses, pad, context_length)
            _, scores, _ = get_reward(models.reward, torch.cat((queries, postprocessed), 1), pad, context_length)
            first_true_indices(postprocessed == pad)
        return responses.shape[1]

    fn = {"bare": bare, "inspect": inspect, "trl": trl}[side]
    # warm up every code path on a tiny batch, so the timed run measures steady-state work
    saved = (prompts, tokens)
    prompts, tokens = PROMPTS[:2], 4
    settings["max_new_tokens"] = 4
    fn()
    prompts, tokens = saved
    settings["max_new_tokens"] = tokens
    with PeakRSS() as mem:
        start = time.perf_counter()
        width = fn()
        seconds = time.perf_counter() - start
    return {"side": side, "seconds": seconds, "peak_growth_mb": mem.growth / 2**20, "width": width,
            "stages": dict(stages)}


def capture_memory(batch: int, tokens: int) -> dict:
    """Bytes the per-token capture keeps versus what output_scores keeps, for batch x tokens."""
    sys.path.insert(0, str(ROOT))
    from inspector import load_models, run_rollout

    models = load_models()
    r = run_rollout(models, PROMPTS[:2], max_new_tokens=8, seed=0)
    names = ("logprobs", "raw_logprobs", "ranks", "entropy", "topk_ids", "topk_logprobs")
    per_token = sum(getattr(r, n).element_size() * getattr(r, n)[0, 0].numel() for n in names)
    vocab = models.policy.config.vocab_size
    capture = per_token * batch * tokens
    scores = 4 * vocab * batch * tokens  # one float32 [B, V] tensor per generated step
    return {"capture_bytes": capture, "output_scores_bytes": scores, "ratio": capture / scores}


def views_at_scale(batch: int = 16, tokens: int = 512) -> dict:
    """Build every view for a batch x tokens rollout (tiled from a real one): time and page payload."""
    sys.path.insert(0, str(ROOT))
    import dataclasses

    import torch

    from inspector import load_models, run_rollout
    from inspector.diagnostics import diagnose
    from inspector.trainers.ppo import rollout_ppo_step
    from inspector import views

    models = load_models()
    r = run_rollout(models, PROMPTS[:2], max_new_tokens=32, seed=0, do_sample=True, temperature=0.7)
    reps_b, reps_g = -(-batch // r.batch_size), -(-tokens // r.response_width)

    def tile(t, per_token: bool):
        t = t.repeat(reps_b, *([1] * (t.dim() - 1)))[:batch]
        return t.repeat(1, reps_g, *([1] * (t.dim() - 2)))[:, :tokens] if per_token else t

    per_token = ["responses", "postprocessed_responses", "logprobs", "raw_logprobs", "new_logprobs", "ref_logprobs",
                 "ranks", "entropy", "topk_ids", "topk_logprobs", "values"]
    fields = {n: tile(getattr(r, n), True) for n in per_token}
    Q = r.context_length
    queries = tile(r.queries, False)
    fields.update(
        queries=queries, query_attention_mask=tile(r.query_attention_mask, False),
        sequences=torch.cat((queries, fields["responses"]), 1),
        query_responses=torch.cat((queries, fields["responses"]), 1),
        postprocessed_query_responses=torch.cat((queries, fields["postprocessed_responses"]), 1),
        reward_query_responses=torch.cat((queries, fields["postprocessed_responses"]), 1),
        sequence_lengths=torch.full((batch,), tokens - 2), contain_eos_token=torch.zeros(batch, dtype=torch.bool),
        scores=tile(r.scores, False), score_positions=torch.full((batch,), Q + tokens - 2),
        prompts=(r.prompts * reps_b)[:batch], prompt_index=list(range(batch)), query_texts=(r.query_texts * reps_b)[:batch],
        response_texts=(r.response_texts * reps_b)[:batch], response_texts_raw=(r.response_texts_raw * reps_b)[:batch],
        postprocessed_response_texts=(r.postprocessed_response_texts * reps_b)[:batch],
    )
    big = dataclasses.replace(r, **fields)
    start = time.perf_counter()
    step = rollout_ppo_step(big)
    payload = [
        views.sequences_html(big), views.logprob_heatmap(big).to_json(), views.entropy_heatmap(big).to_json(),
        views.logprob_gap_figure(big).to_json(), views.logprob_agreement_markdown(big),
        views.stops_table(big).to_json(), views.batch_table(big).to_json(), views.split_html(big, 0),
        views.value_reward_html(big, 0), views.values_figure(big, 0).to_json(), views.ppo_rows_html(big, step, 0),
        views.diagnostics_html(diagnose(big)),
    ]
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "payload_mb": sum(len(p.encode()) for p in payload) / 2**20, "shape": [batch, tokens]}


def cold_start(port: int, cache: str | None) -> dict:
    """From `python app.py` to a page that answers, and to models ready (the first click's load)."""
    import urllib.request

    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1")
    if cache:
        env["INSPECTOR_CACHE_DIR"] = cache
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - start > 300:
                    raise RuntimeError("the app did not start")
                time.sleep(0.1)
        page = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait()
    load_env = dict(env)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from inspector import load_models; load_models()"], cwd=ROOT, env=load_env,
                   check=True, capture_output=True)
    return {"page_answers_s": page, "models_ready_s": time.perf_counter() - t0}


def run_child(kind: str, *args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, *map(str, args)], cwd=ROOT,
                         capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--skip-cold", action="store_true")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling at temperature 0.7")
    p.add_argument("--child", nargs="+")
    args = p.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "capture":
            print(json.dumps(capture_memory(8, 256)))
        elif kind == "views":
            print(json.dumps(views_at_scale()))
        else:
            print(json.dumps(child(kind, int(rest[0]), int(rest[1]), rest[2:] == ["greedy"])))
        return

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB, Python {platform.python_version()}")
    print(f"batch {args.batch} x {args.tokens} new tokens, {'greedy' if args.greedy else 'sampled at T = 0.7'}, "
          f"{args.reps} repetitions, sides alternating\n")
    results: dict[str, list[dict]] = {"bare": [], "inspect": [], "trl": []}
    for rep in range(args.reps):
        for side in results:
            res = run_child(side, args.batch, args.tokens, *(["greedy"] if args.greedy else []))
            results[side].append(res)
            print(f"  rep {rep + 1} {side:8s} {res['seconds']:7.2f} s  peak +{res['peak_growth_mb']:7.1f} MB  "
                  f"({res['width']} tokens)", flush=True)
            if side == "inspect":
                print("    passes after generation: " + ", ".join(f"{k} {v:.3f} s" for k, v in res["stages"].items()
                                                                  if k != "generate"), flush=True)
    med = {s: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_growth_mb")} for s, rs in results.items()}
    print("\nmedians:")
    for s, m in med.items():
        print(f"  {s:8s} {m['seconds']:7.2f} s  peak +{m['peak_growth_mb']:7.1f} MB")
    print("\ninspect, each pass (medians; 'generate' is the generation with the capture, the rest comes after it):")
    names = list(results["inspect"][0]["stages"])
    bare = med["bare"]["seconds"]
    for name in names:
        t = statistics.median(r["stages"].get(name, 0.0) for r in results["inspect"])
        print(f"  {name:15s} {t:7.3f} s  {t / bare:6.1%} of bare generate")
    rest = med["inspect"]["seconds"] - sum(statistics.median(r["stages"].get(n, 0.0) for r in results["inspect"])
                                            for n in names)
    print(f"  {'unaccounted':15s} {rest:7.3f} s")
    print(f"\ninspect / bare generation, time:   {med['inspect']['seconds'] / med['bare']['seconds']:.2f}x  (goal <= 1.2x)")
    print(f"inspect / TRL pipeline, time:      {med['inspect']['seconds'] / med['trl']['seconds']:.2f}x  (goal <= 0.9x)")
    print(f"inspect / TRL pipeline, peak mem:  "
          f"{med['inspect']['peak_growth_mb'] / max(med['trl']['peak_growth_mb'], 1e-9):.2f}x  (goal <= 0.5x)")
    cap = run_child("capture")
    print(f"capture / output_scores memory, 8 x 256: {cap['capture_bytes'] / 2**20:.2f} MB / "
          f"{cap['output_scores_bytes'] / 2**20:.0f} MB = 1/{1 / cap['ratio']:.0f}  (goal <= 1/20)")
    v = run_child("views")
    print(f"every view for {v['shape'][0]} x {v['shape'][1]}: {v['seconds']:.2f} s, payload {v['payload_mb']:.2f} MB "
          "(goals < 1 s, < 5 MB)")
    if not args.skip_cold:
        import tempfile

        warm = cold_start(7871, None)
        print(f"start with the converted model cached: page answers in {warm['page_answers_s']:.1f} s, models ready "
              f"in {warm['models_ready_s']:.1f} s more (goal < 15 s)")
        with tempfile.TemporaryDirectory() as empty:
            first = cold_start(7872, empty)
        print(f"first-ever start (GGUF conversion included): page answers in {first['page_answers_s']:.1f} s, "
              f"models ready in {first['models_ready_s']:.1f} s more")


if __name__ == "__main__":
    main()
