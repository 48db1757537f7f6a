"""Command line: `python -m inspector "prompt" ["prompt" ...]` runs a rollout on the default models and
prints, per sample, the split, the stop and pad positions and where the score was read."""

from __future__ import annotations

import argparse
import sys
import time

from .errors import InspectorError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m inspector", description=__doc__.splitlines()[0])
    p.add_argument("prompts", nargs="+", help="prompts, one argument each")
    p.add_argument("--policy", default=None, help="policy model: Hub id or local folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--reward", default=None, help="reward model (default: the built-in sentiment reward)")
    p.add_argument("--value", default=None, help="value model (default: the reward model)")
    p.add_argument("--reference", default=None, help="reference model (default: the policy)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-k", type=int, default=0, help="0 turns top-k off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=1, help="samples per prompt")
    p.add_argument("--stop", default="eos", help="'eos' (default), 'none', a token id, or the text of one token")
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--attention", choices=("trl", "tokenizer"), default="trl")
    p.add_argument("--ignore-generation-config", action="store_true",
                   help="sample without the model's generation_config.json (repetition penalty, n-gram bans, ...)")
    p.add_argument("--json", metavar="FILE", help="write the whole rollout record as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .export import rollout_to_json
    from .models import load_models
    from .report import format_rollout
    from .rollout import EOS, run_rollout

    named = {"eos": EOS, "none": None}
    stop = named[args.stop.lower()] if args.stop.lower() in named else int(args.stop) if args.stop.isdigit() else args.stop
    try:
        started = time.perf_counter()
        models = load_models(args.policy, args.reward, args.value, args.reference,
                             progress=lambda m: print(f"... {m}", file=sys.stderr))
        loaded = time.perf_counter() - started
        rollout = run_rollout(
            models, args.prompts, max_new_tokens=args.max_new_tokens, do_sample=not args.greedy,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
            stop_token_id=stop, use_chat_template=not args.no_chat_template, attention=args.attention,
            samples_per_prompt=args.samples, ignore_generation_config=args.ignore_generation_config,
        )
    except InspectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_rollout(rollout))
    print(f"\nmodels loaded in {loaded:.1f} s; rollout in {rollout.timings['total']:.1f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(rollout_to_json(rollout))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
