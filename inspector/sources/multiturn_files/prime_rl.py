"""prime-rl rollout traces: `<output_dir>/rollouts/step_<N>/{train,eval}/{all,effective}/traces.jsonl`.

Writer: prime-rl's FileMonitor (PrimeIntellect-ai/prime-rl 559b44772e47, src/prime_rl/monitors/file.py:50), one
verifiers v1 `Episode.to_record()` per line (verifiers a60a606ecc4d, verifiers/v1/episode.py:149-155; None fields
are omitted). An episode holds `traces`; a trace holds `nodes`, each a `MessageNode` (verifiers/v1/graph.py):
`parent` (index into nodes; absent for a root), `message` (role, content, tool_calls, tool_call_id), `sampled`,
`token_ids` (this node's DELTA: its leading template scaffold + its tokens), `mask` (per token: True on
model-sampled completion tokens only), `is_content` (per token when attributed, else empty), `logprobs` and
`advantages` (COMPACT: one per True in `mask`). Rewards: `trace.rewards = {name: {"score", "weight"}}`.

Every root-to-leaf path of a trace is one trajectory (several leaves = several branches: sub-agents, context
resets). Compact logprobs / advantages are expanded onto the positions where `mask` is True.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import InputError
from ._stream import first_true, rollout_of, trajectory_from_stream

FORMAT = "prime-rl"
NOTE = ("prime-rl: loss mask = the nodes' `mask` (True on sampled completion tokens only); logprobs and "
        "advantages expanded from one-per-True-mask onto the tokens")


def _expand(values: list | None, mask: list[bool], what: str, where: str) -> list:
    if values is None:
        return [None] * len(mask)
    if len(values) != sum(mask):
        raise InputError(f"prime-rl: {where}: {len(values)} {what} for {sum(mask)} masked tokens "
                         "(compact values must number the True entries of `mask`).")
    it = iter(values)
    return [next(it) if m else None for m in mask]


def _openai_message(message: dict) -> dict:
    m = {k: v for k, v in message.items() if k in ("role", "content", "tool_call_id", "name", "reasoning_content")}
    if message.get("tool_calls"):
        m["tool_calls"] = [{"id": c.get("id"), "type": "function",
                            "function": {"name": c.get("name"), "arguments": c.get("arguments")}}
                           for c in message["tool_calls"]]
    return m


def branches(nodes: list[dict]) -> list[list[int]]:
    """Root-to-leaf node index paths, in leaf order. Raises InputError on a parent that is not an earlier node."""
    parents = set()
    for i, node in enumerate(nodes):
        p = node.get("parent")
        if p is not None:
            if not 0 <= p < i:
                raise InputError(f"prime-rl: node {i} names parent {p}, which is not an earlier node.")
            parents.add(p)
    paths = []
    for leaf in (i for i in range(len(nodes)) if i not in parents):
        path, i = [], leaf
        while i is not None:
            path.append(i)
            i = nodes[i].get("parent")
        paths.append(path[::-1])
    return paths


def _branch(nodes, path, where, tokenizer, extra) -> tuple:
    ids, sampled, roles, lps, advs, content = [], [], [], [], [], 0
    for i in path:
        node = nodes[i]
        toks, mask = node.get("token_ids", []), [bool(m) for m in node.get("mask", [])]
        if len(mask) != len(toks):
            raise InputError(f"prime-rl: {where} node {i}: mask has {len(mask)} entries, token_ids {len(toks)}.")
        ids += toks
        sampled += mask
        role = node.get("message", {}).get("role", "user")
        roles += ["assistant" if m else role for m in mask]
        lps += _expand(node.get("logprobs"), mask, "logprobs", f"{where} node {i}")
        advs += _expand(node.get("advantages"), mask, "advantages", f"{where} node {i}")
        content += sum(1 for c in node.get("is_content", []) if c is False)
    tr = trajectory_from_stream(
        ids, sampled=sampled, trained=sampled, logprobs=[0.0 if x is None else x for x in lps],
        prompt_length=first_true(sampled, len(ids)), source=FORMAT, tokenizer=tokenizer, roles=roles,
        notes=[NOTE] + ([f"{content} template-scaffold tokens (is_content False)"] if content else []),
        messages=[_openai_message(nodes[i].get("message", {})) for i in path], **extra)
    return tr, advs


def read_prime_rl(path, tokenizer=None):
    """A `MultiTurnRollout` from a prime-rl traces.jsonl: one trajectory per branch of every trace. The sample's
    reward is the sum of score x weight of its trace; its advantage the first expanded one (they are per token)."""
    trajectories, rewards, advantages = [], [], []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        episode = json.loads(line)
        if "traces" not in episode:
            raise InputError(f"{path}: line {n} is not a verifiers episode (no `traces`).")
        group = episode.get("group") or {}
        for t, trace in enumerate(episode["traces"]):
            nodes = trace.get("nodes", [])
            reward = sum(float(r.get("score", 0.0)) * float(r.get("weight", 1.0))
                         for r in (trace.get("rewards") or {}).values())
            for b, node_path in enumerate(branches(nodes)):
                where = f"line {n} trace {t} branch {b}"
                tr, advs = _branch(nodes, node_path, where, tokenizer,
                                   {"group": int(group.get("id", n - 1)) if isinstance(group, dict) else n - 1})
                tr.events = [{"episode": episode.get("id"), "trace": trace.get("id"), "branch": b,
                              "stop_condition": trace.get("stop_condition"), "nodes": node_path}]
                trajectories.append(tr)
                rewards.append(reward)
                advantages.append(next((a for a in advs if a is not None), None))
    return rollout_of(trajectories, source=FORMAT, path=path, tokenizer=tokenizer, notes=[NOTE], rewards=rewards,
                      advantages=advantages if any(a is not None for a in advantages) else None)
