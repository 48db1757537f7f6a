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
    p.add_argument("--engine-url", default=None, metavar="URL",
                   help="sample with this OpenAI-compatible server (e.g. vLLM at http://127.0.0.1:8000) instead of "
                        "in-process generate; the trainer-side passes stay in-process")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "bfloat16-fp32-head"),
                   help="the trainer-side models' precision (bfloat16-fp32-head: TRL's cast_lm_head_to_fp32)")
    p.add_argument("--device-map", default=None, help="e.g. 'auto': shard the models across the GPUs (accelerate)")
    p.add_argument("--ignore-generation-config", action="store_true",
                   help="sample without the model's generation_config.json (repetition penalty, n-gram bans, ...)")
    p.add_argument("--trainer", choices=("ppo", "grpo", "verl"), default="ppo",
                   help="whose step to compute: PPO (TRL 0.x, default), GRPO (TRL 1.16) or verl's GRPO")
    p.add_argument("--num-generations", type=int, default=None,
                   help="completions per prompt for grpo/verl (default 8, TRL's); replaces --samples")
    p.add_argument("--reward-func", action="append", default=None, metavar="NAME",
                   help="grpo/verl reward function, repeatable: a built-in (sentiment, length, format, exact_answer) "
                        "or module:function with TRL's signature (default: the reward model's score)")
    p.add_argument("--reward-weights", type=float, nargs="+", default=None, help="one weight per --reward-func")
    p.add_argument("--json", metavar="FILE", help="write the whole rollout record as JSON")
    return p


def _run_command(argv: list[str]) -> int:
    from .run_cli import main as run_main

    return run_main(argv)


SUBCOMMANDS = {"run": _run_command}
"""`python -m inspector <name> ...`: the first argument names a subcommand; anything else is a prompt."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    args = _parser().parse_args(argv)
    from .models import load_models
    from .record.format import rollout_to_json
    from .record.rollout import EOS
    from .sources.runner import run_rollout
    from .views.report import format_rollout

    grpo_config = None
    if args.trainer != "ppo":
        from .trainers.grpo_config import make_config

        if args.samples != 1 and args.num_generations not in (None, args.samples):
            print("error: give --num-generations for grpo/verl, not --samples: it is the samples per prompt.", file=sys.stderr)
            return 1
        try:
            grpo_config = make_config(args.trainer, num_generations=args.num_generations or (args.samples if args.samples != 1 else 8))
        except InspectorError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        args.samples = grpo_config.num_generations
    elif args.num_generations is not None:
        print("error: --num-generations is for --trainer grpo or verl; PPO takes --samples.", file=sys.stderr)
        return 1
    named = {"eos": EOS, "none": None}
    stop = named[args.stop.lower()] if args.stop.lower() in named else int(args.stop) if args.stop.isdigit() else args.stop
    try:
        started = time.perf_counter()
        models = load_models(args.policy, args.reward, args.value, args.reference, dtype=args.dtype,
                             device_map=args.device_map, progress=lambda m: print(f"... {m}", file=sys.stderr))
        loaded = time.perf_counter() - started
        rollout = run_rollout(
            models, args.prompts, max_new_tokens=args.max_new_tokens, do_sample=not args.greedy,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
            stop_token_id=stop, use_chat_template=not args.no_chat_template, attention=args.attention,
            samples_per_prompt=args.samples, ignore_generation_config=args.ignore_generation_config,
            engine_url=args.engine_url, trainer=args.trainer,
        )
    except InspectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_rollout(rollout))
    if args.engine_url:
        from .diagnostics.sampler import sampler_mismatch

        mm = sampler_mismatch(rollout)
        print(f"\nsampled by the engine at {rollout.engine['url']} serving {rollout.engine['served_model']}; "
              f"sampler mismatch: {mm.diagnosis.text}")
    step = None
    if grpo_config is not None:
        from .views.report import format_grpo_step

        try:
            step = _grpo_step(args, models, rollout, grpo_config)
        except InspectorError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print("\n" + format_grpo_step(rollout, step))
    print(f"\nmodels loaded in {loaded:.1f} s; rollout in {rollout.timings['total']:.1f} s")
    if args.json:
        text = rollout_to_json(rollout)
        if step is not None:
            import json

            text = json.dumps(json.loads(text) | {"grpo_step": step.to_dict()}, ensure_ascii=False)
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote {args.json}")
    return 0


def _grpo_step(args, models, rollout, grpo_config):
    """The GRPO step of the rollout under `--reward-func` (reward functions as GRPO users write them, called as
    TRL calls them), or with the reward model's score as the one reward function."""
    from .trainers.grpo import rollout_grpo_step

    if not args.reward_func:
        return rollout_grpo_step(rollout, rollout.scores.float().unsqueeze(1), grpo_config,
                                 reward_func_names=["reward_model"])
    from dataclasses import replace

    from .trainers.rewards import attach_reward_logs, builtin_reward, load_reward_func, score_rewards

    funcs = [builtin_reward(n, models) if n == "sentiment" else load_reward_func(n) for n in args.reward_func]
    table = score_rewards(rollout, funcs, args.reward_weights, tokenizer=models.tokenizer)
    grpo_config = replace(grpo_config, reward_weights=tuple(table.weights))
    step = rollout_grpo_step(rollout, table.rewards_per_func, grpo_config, reward_func_names=table.names)
    attach_reward_logs(step, table)  # what the functions passed to log_metric / log_extra: in the metrics, the JSON
    return step


if __name__ == "__main__":
    sys.exit(main())
