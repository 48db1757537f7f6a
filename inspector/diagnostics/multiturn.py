"""Findings on multi-turn trajectories: which tokens the trainer trains on against which the model wrote.

Each check reads a `Trajectory` (per-token role, turn, sampled flag, TRL's loss mask) and names the turns and
tokens it touches (`positions` are absolute indices in `token_ids`) and the fix. `decode(ids) -> str` is needed
by the text checks (a tokenizer's decode, or the rollout's `tokens` table).
"""

from __future__ import annotations

from .finding import Finding

EXTERNAL = ("tool", "environment")
TOOL_RESULT_MARKERS = ("<tool_response>", "</tool_response>")


def _loss_at(traj) -> dict[int, int]:
    """Absolute index -> loss mask value, over the completion."""
    return {traj.prompt_length + k: m for k, m in enumerate(traj.loss_mask)}


def _finding(code, title, detail, why, fix, hits, severity="warning") -> Finding:
    """hits: list of (sample, absolute index, turn)."""
    samples = sorted({s for s, _, _ in hits})
    return Finding(code=code, title=title, severity=severity, detail=detail, why=why, fix=fix, samples=samples,
                   positions=[(s, k) for s, k, _ in hits], turns=sorted({(s, t) for s, _, t in hits}))


def tool_tokens_trained(trajs) -> list[Finding]:
    hits = [(i, k, t.turn[k]) for i, t in enumerate(trajs) for k, m in _loss_at(t).items()
            if m and t.role[k] in EXTERNAL]
    if not hits:
        return []
    return [_finding(
        "mt-tool-tokens-trained", "Tool / environment tokens are in the loss",
        f"{len(hits)} token(s) the tools or the environment wrote have loss mask 1.",
        "The policy is pushed to predict text it never generated (tool results, environment replies): the "
        "gradient rewards copying the tool's output instead of calling the tool.",
        "Set tool_mask (TRL `tools`/`environment_factory`) or return env_mask from rollout_func with 0 on every "
        "token the model did not sample; for verl set response_mask 0 on tool responses.", hits)]


def eos_masked(trajs, eos_token_ids: list[int]) -> list[Finding]:
    eos = set(eos_token_ids)
    hits = []
    for i, t in enumerate(trajs):
        loss = _loss_at(t)
        for k in range(t.prompt_length, len(t.token_ids)):
            if t.sampled[k] and t.token_ids[k] in eos and not loss[k]:
                hits.append((i, k, t.turn[k]))
    if not hits:
        return []
    return [_finding(
        "mt-eos-masked", "The assistant's closing EOS / <|im_end|> is masked out",
        f"{len(hits)} end-of-turn token(s) the model sampled have loss mask 0.",
        "The model never gets a gradient on stopping its turn: it learns what to say but not when to stop "
        "(TRL PR #6357: with pad == EOS the terminating EOS got label -100).",
        "Keep the sampled end-of-turn token inside the loss mask; build masks from lengths, not from `ids != pad` "
        "when pad == EOS.", hits)]


def header_trained(trajs) -> list[Finding]:
    hits = [(i, k, t.turn[k]) for i, t in enumerate(trajs) for k, m in _loss_at(t).items()
            if m and not t.sampled[k] and t.role[k] not in EXTERNAL]
    if not hits:
        return []
    return [_finding(
        "mt-header-trained", "Template tokens the model did not sample are trained on",
        f"{len(hits)} token(s) of the chat template (turn headers such as `<|im_start|>assistant\\n`, separators) "
        "have loss mask 1 though the model did not generate them.",
        "The loss teaches the model to emit scaffolding the template inserts; gradients and length metrics count "
        "tokens that are not the policy's choices (slime #1477).",
        "Mask every token between the end of one generated turn and the start of the next (TRL puts the next "
        "assistant header inside the tool suffix, mask 0).", hits)]


def drift_findings(drifts: dict[int, dict], trajs) -> list[Finding]:
    """drifts: sample -> `template_drift` result."""
    out, hits, retok, think = [], [], [], []
    for i, d in drifts.items():
        if d.get("first_diff") is not None and d.get("differing"):
            k = d["first_diff"]
            hits.append((i, k, trajs[i].turn[min(k, len(trajs[i].turn) - 1)]))
        retok += [(i, r["first_diff"], r["turn"]) for r in d.get("retokenized", [])]
        think += [(i, r["start"], r["turn"]) for r in d.get("think_dropped", [])]
    if hits:
        n = sum(d.get("differing", 0) for d in drifts.values())
        out.append(_finding(
            "mt-drift", "The re-rendered conversation differs from the generated stream",
            f"A fresh apply_chat_template of the final messages differs from the generated token stream in "
            f"{len(hits)} trajectory(ies), {n} token(s) in all (first difference marked).",
            "A trainer that re-tokenizes the messages computes logprobs on tokens the model never saw: the ratio "
            "and the advantage land on the wrong tokens (verl #6719).",
            "Keep the generated ids (token-in, token-out) and train on them; never rebuild ids from messages.", hits))
    if retok:
        out.append(_finding(
            "mt-retokenize", "Decoding and re-encoding a turn changes its ids",
            f"{len(retok)} assistant turn(s) tokenize differently after a decode / encode round trip.",
            "Passing text between turns instead of ids changes what the model is trained on.",
            "Concatenate token ids across turns as TRL's _tool_call_loop does.", retok, severity="info"))
    if think:
        out.append(_finding(
            "mt-think-dropped", "The template drops <think> blocks from past turns",
            f"{len(think)} reasoning block(s) generated in earlier turns are missing from the re-rendered conversation.",
            "The model generated later turns seeing its reasoning; a re-rendered training sequence lacks it "
            "(ART #726: Qwen3 drops the <think> context of past turns).",
            "Train on the generated stream, or use a template that keeps past reasoning (TRL's training templates).",
            think))
    return out


def tool_output_cut(trajs) -> list[Finding]:
    hits, kinds = [], set()
    for i, t in enumerate(trajs):
        for ev in t.events:
            turn = ev.get("turn", 0)
            if ev.get("rolled_back"):
                k = t.prompt_length + ev["rolled_back"].get("completion_tokens", len(t.completion_ids)) - 1
                hits.append((i, min(k, len(t.token_ids) - 1), turn)); kinds.add("dropped (would not fit)")
            for o in ev.get("tool_outcomes") or []:
                if o.get("outcome") == "too-large":
                    hits.append((i, t.prompt_length, turn)); kinds.add("cut at the size cap")
        if len(t.token_ids) > t.prompt_length and t.role[-1] in EXTERNAL:
            hits.append((i, len(t.token_ids) - 1, t.turn[-1])); kinds.add("cut by the length limit")
    if not hits:
        return []
    return [_finding(
        "mt-tool-output-cut", "A tool output was cut or dropped",
        f"{len(hits)} tool result(s): " + ", ".join(sorted(kinds)) + ".",
        "The model acted on a result it did not fully see (or never saw); in TRL the dropped result leaves no trace "
        "but its absence, and the reward still scores the turn.",
        "Raise max_completion_length, cap tool output size in the tool itself, or end the episode explicitly when "
        "the budget is spent.", hits)]


def tool_call_unparsed(trajs) -> list[Finding]:
    hits = []
    for i, t in enumerate(trajs):
        for ev in t.events:
            if ev.get("parse_failed"):
                turn = ev.get("turn", 0)
                ks = [k for k in range(len(t.token_ids)) if t.turn[k] == turn and t.sampled[k]]
                hits.append((i, ks[0] if ks else t.prompt_length, turn))
    if not hits:
        return []
    return [_finding(
        "mt-tool-call-unparsed", "A tool call did not parse",
        f"{len(hits)} assistant turn(s) hold `<tool_call>` text that the response parser could not read; TRL "
        "falls back to plain text and the tool is never called.",
        "The episode ends silently at that turn; the reward sees an answer without the tool's result.",
        "Reward well-formed calls, check the response template matches the chat template, or log parse failures.",
        hits)]


def fake_tool_result(trajs, decode) -> list[Finding]:
    hits = []
    for i, t in enumerate(trajs):
        loss = _loss_at(t)
        for turn in sorted({t.turn[k] for k in range(t.prompt_length, len(t.token_ids)) if t.sampled[k]}):
            ks = [k for k in range(t.prompt_length, len(t.token_ids)) if t.turn[k] == turn and t.sampled[k]]
            text = decode([t.token_ids[k] for k in ks])
            if any(m in text for m in TOOL_RESULT_MARKERS):
                hits += [(i, k, turn) for k in ks if loss[k]][:1]
    if not hits:
        return []
    return [_finding(
        "mt-fake-tool-result", "The model wrote text that looks like a tool result, and it is trained on",
        f"{len(hits)} assistant turn(s) contain `<tool_response>` written by the model itself.",
        "The policy learns to invent tool results instead of calling the tool (a hallucinated observation).",
        "Penalise it in the reward, or stop generation at `<tool_response>` (a stop string) so it cannot be sampled.",
        hits)]


def multiturn_findings(trajs, *, eos_token_ids: list[int], decode=None, drifts: dict | None = None) -> list[Finding]:
    trajs = getattr(trajs, "trajectories", trajs)
    out = tool_tokens_trained(trajs) + eos_masked(trajs, eos_token_ids) + header_trained(trajs)
    out += drift_findings(drifts or {}, trajs) + tool_output_cut(trajs) + tool_call_unparsed(trajs)
    if decode is not None:
        out += fake_tool_result(trajs, decode)
    return out
