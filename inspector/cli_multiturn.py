"""`python -m inspector --multi-turn {tools,env,scripted} "prompt" ...`: a multi-turn rollout on the policy,
printed turn by turn with roles and TRL's masks, the GRPO step, drift, findings and what the rewards receive."""

from __future__ import annotations

import json
import sys

from .errors import InspectorError


def add_arguments(p) -> None:
    p.add_argument("--multi-turn", choices=("tools", "env", "scripted"), default=None,
                   help="multi-turn rollouts with TRL 1.16's loop: python tools, an environment, or scripted replies "
                        "(--max-new-tokens is max_completion_length across turns)")
    p.add_argument("--tool", action="append", default=None, metavar="NAME",
                   help="built-in tool, repeatable: calculator (default), failing_tool, looping_tool, huge_tool")
    p.add_argument("--env", default="guess", help="built-in environment for --multi-turn env (default: guess)")
    p.add_argument("--reply", action="append", default=None, metavar="TEXT",
                   help="a scripted environment reply, repeatable (used in order, cycling)")
    p.add_argument("--max-turns", type=int, default=2,
                   help="max_tool_calling_iterations (tools / env), or environment replies (scripted)")
    p.add_argument("--tool-time-limit", type=float, default=5.0, help="seconds a tool call may run")
    p.add_argument("--tool-size-cap", type=int, default=4096, help="characters of a tool result kept")


def _span_text(tokens: dict, ids: list[int]) -> str:
    return "".join(tokens.get(i, f"<{i}>") for i in ids)


def format_multiturn(ro) -> str:
    lines = [f"multi-turn rollout: mode {ro.settings['mode']}, {len(ro)} trajectories, "
             f"{ro.num_generations} per prompt, max_completion_length {ro.settings['max_completion_length']}"]
    lines += [f"note: {n}" for n in ro.notes]
    for i, t in enumerate(ro.trajectories):
        adv = ro.advantages[i] if ro.advantages else float("nan")
        lines.append(f"\n--- sample {i} (prompt {t.group}): reward {ro.rewards[i]:.3f}, advantage {adv:+.4f}, "
                     f"{len(t.completion_ids)} completion tokens, {sum(t.loss_mask)} in the loss")
        loss = [None] * t.prompt_length + t.loss_mask
        start = t.prompt_length
        for k in range(t.prompt_length + 1, len(t.token_ids) + 1):
            if k == len(t.token_ids) or (t.role[k], t.turn[k]) != (t.role[start], t.turn[start]):
                ids = t.token_ids[start:k]
                trained = sum(loss[start:k])
                lines.append(f"  turn {t.turn[start]} {t.role[start]:<11} {k - start:>4} tok, {trained:>4} trained: "
                             f"{_span_text(ro.tokens, ids)!r}")
                start = k
        for ev in t.events:
            for o in ev.get("tool_outcomes") or []:
                lines.append(f"  tool {o.get('name')}: {o.get('outcome')}" + (f" ({o['error']})" if o.get("error") else ""))
            if ev.get("parse_failed"):
                lines.append(f"  turn {ev['turn']}: tool call did not parse ({ev['parse_failed']})")
            if ev.get("rolled_back"):
                lines.append(f"  turn {ev['turn']}: tool result dropped, it would not fit")
    if ro.grpo:
        lines.append(f"\nGRPO loss (TRL 1.16, under completion_mask x tool_mask): {ro.grpo['loss']:.6f}")
    for d in ro.drift:
        if d.get("differing") or d.get("error"):
            lines.append(f"drift in sample {d['sample']}: first differing token at {d.get('first_diff')} "
                         f"(turn {d.get('first_turn')}), {d.get('differing')} tokens {d.get('error') or ''}")
    lines.append("\nfindings: " + ("none" if not ro.findings else ""))
    for f in ro.findings:
        lines.append(f"  [{f['severity']}] {f['title']}: {f['detail']} Fix: {f['fix']}")
    if ro.trajectories and ro.trajectories[0].reward_input:
        ri = ro.trajectories[0].reward_input
        lines.append("\nwhat the reward functions receive for sample 0 (as TRL passes it): completion = "
                     + json.dumps(ri["completion"], ensure_ascii=False)[:600]
                     + f"; completion_ids: {len(ri['completion_ids'])} ids (tool tokens included); "
                       f"keyword arguments: {', '.join(ri['kwargs'])}")
    return "\n".join(lines)


def main_multiturn(args) -> int:
    from .models import load_models
    from .sources.multiturn_run import run_multiturn

    try:
        models = load_models(args.policy, dtype=args.dtype, device_map=args.device_map,
                             progress=lambda m: print(f"... {m}", file=sys.stderr))
        ro = run_multiturn(models, args.prompts, mode=args.multi_turn, tools=args.tool, env=args.env,
                           scripted_replies=args.reply, max_turns=args.max_turns,
                           max_completion_length=args.max_new_tokens, num_generations=args.num_generations or 2,
                           seed=args.seed, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k or None,
                           tool_time_limit=args.tool_time_limit, tool_size_cap=args.tool_size_cap)
    except InspectorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_multiturn(ro))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(ro.to_dict(), fh, ensure_ascii=False)
        print(f"wrote {args.json}")
    return 0
