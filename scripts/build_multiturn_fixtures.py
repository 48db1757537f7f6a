"""Build the multi-turn fixtures in tests/data/multiturn/: the same two tool-calling conversations written as each
trainer writes them. Run: HF_HUB_OFFLINE=1 python3 scripts/build_multiturn_fixtures.py

The token streams are the default model's tokenizer (SmolLM2-135M-Instruct) under TRL 1.16's
`trl/chat_templates/qwen2_5_training.jinja` (ChatML with Hermes `<tool_call>`). The "sampled" tokens are what a
model generates after the generation prompt: the assistant body up to and including `<|im_end|>`; the `\\n` the
template puts after it is scaffold. Sampler logprobs are placeholders chosen here (no model runs): the j-th sampled
token of sample s gets -(s + 1) / 10 - j / 1000, so a value read one position off is visibly wrong.

Each writer below names the source file and commit it follows.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import sys
import types
import zipfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "multiturn"
sys.path.insert(0, str(ROOT))

TOOLS = [{"type": "function", "function": {
    "name": "multiply", "description": "Multiply two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"]}}}]


def conversation(b: int, answer: str) -> list[dict]:
    return [
        {"role": "system", "content": "You are a calculator."},
        {"role": "user", "content": "What is 12 * 7?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "multiply", "arguments": {"a": 12, "b": b}}}]},
        {"role": "tool", "name": "multiply", "tool_call_id": "call_0", "content": str(12 * b)},
        {"role": "assistant", "content": answer},
    ]


CONVERSATIONS = [conversation(7, "84."), conversation(8, "12 * 7 = 96.")]
REWARDS = [1.0, 0.0]
ADVANTAGES = [0.7071, -0.7071]


def tokenizer_and_template():
    import trl
    from inspector.models import DEFAULT_POLICY, _tokenizer_only

    tok = _tokenizer_only(DEFAULT_POLICY)
    template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5_training.jinja").read_text()
    return tok, template


def segments(tok, template, conv) -> list[tuple[str, list[int], int]]:
    """The stream as generated turn by turn: (kind, ids, message index) with kind prompt | sampled | scaffold |
    context. Each piece is the text the template adds, tokenized alone (checked against the whole render)."""
    def render(msgs, gen):
        return tok.apply_chat_template(msgs, tools=TOOLS, chat_template=template, tokenize=False,
                                       add_generation_prompt=gen)

    def ids(text):
        return tok(text, add_special_tokens=False)["input_ids"]

    out, done = [], ""
    prompt = render(conv[:2], True)
    out.append(("prompt", ids(prompt), 1))
    done = prompt
    for k in range(2, len(conv)):
        if conv[k]["role"] == "assistant":
            full = render(conv[:k + 1], False)
            body = full[len(done):]
            cut = body.rindex("<|im_end|>") + len("<|im_end|>")
            out.append(("sampled", ids(body[:cut]), k))
            if body[cut:]:
                out.append(("scaffold", ids(body[cut:]), k))
            done = full
        else:
            nxt = render(conv[:k + 1], True)
            out.append(("context", ids(nxt[len(done):]), k))
            done = nxt
    whole = tok(done, add_special_tokens=False)["input_ids"]
    assert whole == [t for _, s, _ in out for t in s], "pieces tokenized alone differ from the whole render"
    return out


def flat(segs, s: int):
    """ids, sampled flags and per-token logprobs (placeholder values, 0.0 where not sampled) of sample s."""
    ids, sampled, lps, j = [], [], [], 0
    for kind, piece, _ in segs:
        for t in piece:
            ids.append(t)
            sampled.append(kind == "sampled")
            if kind == "sampled":
                lps.append(round(-(s + 1) / 10 - j / 1000, 6))
                j += 1
            else:
                lps.append(0.0)
    return ids, sampled, lps


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))


def verl(tok, template) -> None:
    """verl 0.9.1 (wheel verl-0.9.1-py3-none-any.whl): AgentLoopOutput fields (verl/experimental/agent_loop/
    agent_loop.py:88-160; response_mask 1 on model tokens, 0 on tool / inserted tokens, their logprob 0.0, as
    verl/utils/tokenizer/continuous_token.py align_response_metadata sets them), padded by verl's own
    `AgentLoopWorker._pad_token_ids` (lifted from the wheel with ast) and the lines of `_agent_loop_postprocess`
    (agent_loop.py:753-781), stacked as `_postprocess` names the batch keys (agent_loop.py:1079-1091). The file is
    the dump a user writes from that DataProto: one JSON line per row, every batch key as a list plus
    `__num_turns__` from non_tensor_batch."""
    src = zipfile.ZipFile(os.path.expanduser("~/.cache/rollout-inspector/wheels/verl-0.9.1-py3-none-any.whl")).read(
        "verl/experimental/agent_loop/agent_loop.py").decode()
    fn = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.FunctionDef) and n.name == "_pad_token_ids")
    scope = {"torch": torch}
    exec(ast.unparse(fn), scope)
    worker = types.SimpleNamespace(tokenizer=tok)
    pad = lambda tokens, **kw: scope["_pad_token_ids"](worker, tokens, **kw)  # noqa: E731
    prompt_length, response_length = 256, 96
    rows = []
    for s, conv in enumerate(CONVERSATIONS):
        segs = segments(tok, template, conv)
        ids, sampled, lps = flat(segs, s)
        n_prompt = len(segs[0][1])
        prompt_ids, response_ids = ids[:n_prompt], ids[n_prompt:]
        mask, logprobs = [int(x) for x in sampled[n_prompt:]], lps[n_prompt:]
        prompt_output = pad(prompt_ids, max_length=prompt_length, padding_side="left", return_attention_mask=True)
        response_output = pad(response_ids, max_length=response_length, padding_side="right", return_attention_mask=True)
        response_mask_output = pad(mask, max_length=response_length, padding_side="right", return_attention_mask=False)
        pad_size = response_length - len(logprobs)
        response_logprobs = torch.tensor(logprobs + [0.0] * pad_size).unsqueeze(0)
        response_mask = response_mask_output["input_ids"] * response_output["attention_mask"]
        attention_mask = torch.cat([prompt_output["attention_mask"], response_output["attention_mask"]], dim=1)
        input_ids = torch.cat([prompt_output["input_ids"], response_output["input_ids"]], dim=1)
        rows.append({
            "prompts": prompt_output["input_ids"][0].tolist(), "responses": response_output["input_ids"][0].tolist(),
            "response_mask": response_mask[0].tolist(), "input_ids": input_ids[0].tolist(),
            "attention_mask": attention_mask[0].tolist(),
            "rollout_log_probs": response_logprobs[0].to(torch.float32).tolist(),
            "__num_turns__": sum(1 for m in conv if m["role"] != "system"),
        })
    write_jsonl(OUT / "verl_agent_loop.jsonl", rows)


def prime_rl(tok, template) -> None:
    """prime-rl (PrimeIntellect-ai/prime-rl 559b44772e47, src/prime_rl/monitors/file.py:50) writes one verifiers
    v1 `Episode.to_record()` per line (verifiers a60a606ecc4d, verifiers/v1/episode.py:149-155: model_dump(mode=
    "json", exclude_none=True)); nodes as verifiers/v1/graph.py `add_turn` builds them (commit 01844748128a): one
    node per message holding its delta token_ids, `mask` True on the sampled completion only, `logprobs` one per
    True in mask, the assistant node = generation-prompt scaffold + completion, the scaffold after a completion
    (the `\\n` after `<|im_end|>`) on the next input node; `advantages` compact like logprobs."""
    episodes = []
    for s, conv in enumerate(CONVERSATIONS):
        segs = segments(tok, template, conv)
        prompt = segs[0][1]
        sys_end = tok(tok.apply_chat_template(conv[:1], tools=TOOLS, chat_template=template, tokenize=False),
                      add_special_tokens=False)["input_ids"]
        user_end = tok(tok.apply_chat_template(conv[:2], tools=TOOLS, chat_template=template, tokenize=False),
                       add_special_tokens=False)["input_ids"]
        nodes = [{"message": conv[0], "token_ids": prompt[:len(sys_end)], "mask": [False] * len(sys_end)},
                 {"parent": 0, "message": conv[1], "token_ids": prompt[len(sys_end):len(user_end)],
                  "mask": [False] * (len(user_end) - len(sys_end))}]
        pending = prompt[len(user_end):]  # the generation prompt goes on the assistant node
        j = 0
        for kind, piece, k in segs[1:]:
            msg = dict(conv[k])
            if kind == "sampled":
                if msg.get("tool_calls"):
                    msg["tool_calls"] = [{"id": c["id"], "name": c["function"]["name"],
                                          "arguments": json.dumps(c["function"]["arguments"])} for c in msg["tool_calls"]]
                lps = [round(-(s + 1) / 10 - (j + i) / 1000, 6) for i in range(len(piece))]
                j += len(piece)
                nodes.append({"parent": len(nodes) - 1, "message": msg, "sampled": True,
                              "token_ids": pending + piece, "mask": [False] * len(pending) + [True] * len(piece),
                              "is_content": [False] * len(pending) + [True] * len(piece),
                              "logprobs": lps, "advantages": [ADVANTAGES[s]] * len(piece), "finish_reason": "stop"})
                pending = []
            elif kind == "scaffold":
                pending = piece
            else:  # a tool message: the previous scaffold + the message + the next generation prompt
                head = "<|im_start|>assistant\n"
                text = tok.decode(piece)
                assert text.endswith(head)
                n_head = len(tok(head, add_special_tokens=False)["input_ids"])
                body = pending + piece[:-n_head]
                nodes.append({"parent": len(nodes) - 1, "message": {"role": "tool", "content": msg["content"],
                                                                    "tool_call_id": msg["tool_call_id"]},
                              "token_ids": body, "mask": [False] * len(body)})
                pending = piece[-n_head:]
        trace = {"version": 1, "id": f"trace-{s}", "task": {"prompt": conv[1]["content"]}, "nodes": nodes,
                 "rewards": {"correct": {"score": REWARDS[s], "weight": 1.0}}, "is_completed": True, "ok": True,
                 "stop_condition": "no_tool_calls"}
        episodes.append({"id": f"episode-{s}", "env": "calculator", "group": {"id": 0, "index": s}, "ok": True,
                         "errors": [], "traces": [trace]})
    write_jsonl(OUT / "prime_rl_traces.jsonl", episodes)


def skyrl(tok, template) -> None:
    """SkyRL (NovaSky-AI/SkyRL): the generator's per-sample lists (skyrl/train/generators/utils.py
    get_response_ids_and_loss_mask_from_messages, commit a9564572eb8e: assistant generated tokens up to and including
    the EOS -> 1, the `\\n` after it and user/tool tokens -> 0, their logprob 0.0), laid out as
    skyrl/train/dataset/preprocess.py convert_prompts_responses_to_batch_tensors does (commit 07eefd6ce6b6: one
    left-padded block, response tensors right-aligned in (B, max_response)), pickled as
    skyrl/backends/skyrl_train/training_batch.py TensorBatch.save does (commit 0446435ca3da: `__reduce__` ->
    (_rebuild_tensor_batch, (TrainingInputBatch, state)), tensors as {"format": "numpy", data, shape, dtype})."""
    prompts, responses, loss_masks, logprobs = [], [], [], []
    for s, conv in enumerate(CONVERSATIONS):
        segs = segments(tok, template, conv)
        ids, sampled, lps = flat(segs, s)
        n = len(segs[0][1])
        prompts.append(ids[:n]); responses.append(ids[n:])
        loss_masks.append([int(x) for x in sampled[n:]]); logprobs.append(lps[n:])
    plens, rlens = [len(p) for p in prompts], [len(r) for r in responses]
    max_response, max_total = max(rlens), max(p + r for p, r in zip(plens, rlens))
    seqs, attn, action = [], [], []
    for p, r in zip(prompts, responses):
        pad_len = max_total - len(p) - len(r)
        seqs.append([tok.pad_token_id] * pad_len + p + r)
        attn.append([0] * pad_len + [1] * (len(p) + len(r)))
        action.append([0] * (max_response - len(r)) + [1] * len(r))

    def right(rows, dtype=torch.float):
        out = torch.zeros(len(rows), max_response, dtype=dtype)
        for i, row in enumerate(rows):
            out[i, max_response - len(row):] = torch.tensor(row, dtype=dtype)
        return out

    batch = {"sequences": torch.tensor(seqs), "attention_mask": torch.tensor(attn, dtype=torch.int64),
             "response_mask": torch.tensor(action, dtype=torch.int64), "loss_mask": right(loss_masks),
             "rollout_logprobs": right(logprobs),
             "advantages": right([[a] * len(r) for a, r in zip(ADVANTAGES, responses)]) * right(loss_masks),
             "values": None}

    def serialize(t):
        arr = t.numpy()
        return {"format": "numpy", "data": arr.tobytes(), "shape": arr.shape, "dtype": str(arr.dtype)}

    state = {"batch_dict": {k: (None if v is None else serialize(v.contiguous())) for k, v in batch.items()},
             "batch_size": len(seqs), "device": torch.device("cpu"),
             "metadata": {"response_length": max_response, "policy_prompt_boundaries": [(0, 2)]}}
    name = "skyrl.backends.skyrl_train.training_batch"
    module = types.ModuleType(name)

    def _rebuild_tensor_batch(cls, state):  # pragma: no cover - only its name is pickled
        raise RuntimeError

    class TrainingInputBatch(dict):
        def __reduce__(self):
            return (_rebuild_tensor_batch, (type(self), state))

    for obj in (_rebuild_tensor_batch, TrainingInputBatch):
        obj.__module__ = name
        setattr(module, obj.__name__, obj)
    TrainingInputBatch.__qualname__ = "TrainingInputBatch"
    _rebuild_tensor_batch.__qualname__ = "_rebuild_tensor_batch"
    for part in ("skyrl", "skyrl.backends", "skyrl.backends.skyrl_train"):
        sys.modules.setdefault(part, types.ModuleType(part))
    sys.modules[name] = module
    (OUT / "skyrl_global_step_1_training_input.pkl").write_bytes(pickle.dumps(TrainingInputBatch()))


def nemo_rl(tok, template) -> None:
    """NeMo-RL (NVIDIA-NeMo/RL 7ea279abfbeb): `train_data_step<N>.jsonl` as grpo_train logs it (nemo_rl/algorithms/
    grpo.py:3632-3654) through Logger.log_batched_dict_as_jsonl (nemo_rl/utils/logger.py:1083-1094): every value a
    batch slice of length 1, `idx` beside; token_ids right-padded with pad_token_id to a multiple of 8
    (make_sequence_length_divisible_by); token_loss_mask 1 on generated tokens only; generation_logprobs 0.0
    elsewhere; prev_logprobs with index 0 = 0; advantages the sample's scalar over the whole row; `content` the
    messages' contents (assistant = batch_decode(skip_special_tokens=True))."""
    rows = []
    for s, conv in enumerate(CONVERSATIONS):
        segs = segments(tok, template, conv)
        ids, sampled, lps = flat(segs, s)
        width = -(-len(ids) // 8) * 8
        padn = width - len(ids)
        content = [tok.decode(segs[0][1])]
        for kind, piece, _ in segs[1:]:
            content.append(tok.decode(piece, skip_special_tokens=kind == "sampled"))
        prev = [0.0] + [round(x - 0.002, 6) if sm else -1.5 for x, sm in zip(lps[1:], sampled[1:])]
        row = {"content": [content], "rewards": [REWARDS[s]], "input_lengths": [len(ids)],
               "token_ids": [ids + [tok.pad_token_id] * padn], "token_loss_mask": [[int(x) for x in sampled] + [0] * padn],
               "sample_loss_mask": [1.0], "advantages": [[ADVANTAGES[s]] * width],
               "generation_logprobs": [lps + [0.0] * padn], "prev_logprobs": [prev + [0.0] * padn]}
        rows.append({**row, "idx": s})
    write_jsonl(OUT / "nemo_rl_train_data_step1.jsonl", rows)


def transcripts() -> None:
    """OpenAI chat-completions style transcripts: one {"messages": [...], "tools": [...]} per line, tool calls with
    JSON-string `arguments` and `tool_call_id` on tool messages (the OpenAI API's shapes)."""
    rows = []
    for conv in CONVERSATIONS:
        msgs = []
        for m in conv:
            m = dict(m)
            if m.get("tool_calls"):
                m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}}
                                   for c in m["tool_calls"]]
            msgs.append(m)
        rows.append({"messages": msgs, "tools": TOOLS})
    write_jsonl(OUT / "openai_transcripts.jsonl", rows)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tok, template = tokenizer_and_template()
    verl(tok, template)
    prime_rl(tok, template)
    skyrl(tok, template)
    nemo_rl(tok, template)
    transcripts()
    for p in sorted(OUT.iterdir()):
        print(p.relative_to(ROOT), p.stat().st_size)


if __name__ == "__main__":
    main()
