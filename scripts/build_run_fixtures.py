"""Write the run fixtures in tests/data/runs/ with each trainer's own writer code, lifted from its source.

- verl 0.9.1: `RayPPOTrainer._write_generations` (verl/trainer/ppo/ray_trainer.py:453-477) lifted with `ast` from
  the wheel in ~/.cache/rollout-inspector/wheels, fed `tokenizer.batch_decode(..., skip_special_tokens=True)` texts
  as `_log_rollout_data` (514-546) does; and the TransferQueue trainer's own `_write_generations`
  (verl/trainer/ppo/v1/trainer_base.py:1226-1260), fed and sorted by uid as its `_log_rollout_data` (1297-1340).
- NeMo-RL 7ea279abfbeb698b092856d0dab61e7cf39bc909: `Logger.log_batched_dict_as_jsonl` (nemo_rl/utils/logger.py:
  1071-1096) lifted with `ast`, over a dict whose `make_microbatch_iterator(1)` slices `v[i:i+1]` as
  `BatchedDataDict.slice` does (nemo_rl/distributed/batched_data_dict.py:885-1015); `log_data` keys as grpo.py:3629-3654.
- prime-rl 559b44772e471d1538537b8805cc77f3824a5e64: src/prime_rl/trainer/rl/token_export.py executed whole (its two
  prime_rl imports stubbed: `DefaultLossConfig` with dppo_mask_high/low, and `compute_importance_ratio_and_mismatch_kl`
  lifted from src/prime_rl/trainer/rl/loss.py:100-106); `TokenExporter.export` per micro-batch then `mark_stable`.
- SkyRL a9564572eb8e91076be43c1bd5e4615e3de17265: skyrl/backends/skyrl_train/training_batch.py executed as its own
  module name (jaxtyping and the replay util stubbed), `TrainingInputBatch(...).save(path)` as `dump_data` does.
- slime 624b824a898ab0ec1fcb4d373004c7f3852bf515: `_build_dump_payload` (slime/observability/train_data_utils.py:
  112-188) lifted with `ast`, then `torch.save` as `save_debug_train_data` (191-240).
Token ids come from the default policy's tokenizer (chat-templated prompts, completions ending in EOS); logprobs,
advantages and rewards are seeded numbers. Sources are read from bare git mirrors (`--mirrors`, each
`<owner>+<name>/repo`) at the commits above.

    HF_HUB_OFFLINE=1 python scripts/build_run_fixtures.py --mirrors DIR [--only verl verl_v1 ...]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "tests" / "data" / "runs"
WHEEL = Path.home() / ".cache" / "rollout-inspector" / "wheels" / "verl-0.9.1-py3-none-any.whl"
COMMITS = {"NVIDIA-NeMo+RL": "7ea279abfbeb698b092856d0dab61e7cf39bc909",
           "PrimeIntellect-ai+prime-rl": "559b44772e471d1538537b8805cc77f3824a5e64",
           "NovaSky-AI+SkyRL": "a9564572eb8e91076be43c1bd5e4615e3de17265",
           "THUDM+slime": "624b824a898ab0ec1fcb4d373004c7f3852bf515"}
PROMPTS = ["What is 2 + 2?", "Name a colour."]
COMPLETIONS = [["4", "It is 4."], ["Blue", "Red, I think."], ["Four.", "2 + 2 = 4"], ["Green", "Yellow"]]
G = 2


def source(mirrors: Path, repo: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", str(mirrors / repo / "repo"), "show", f"{COMMITS[repo]}:{path}"],
                          check=True, capture_output=True, text=True).stdout


def lift(text: str, names: set[str], namespace: dict, cls: str | None = None) -> dict:
    """Execute only the named top-level functions / assignments (or methods of `cls`) of a source file."""
    body = ast.parse(text).body
    if cls:
        body = next(n for n in body if isinstance(n, ast.ClassDef) and n.name == cls).body
    keep = []
    for node in body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            node.decorator_list = []
            keep.append(node)
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) in names for t in node.targets):
            keep.append(node)
    exec(compile(ast.Module(body=keep, type_ignores=[]), "<lifted>", "exec"), namespace)
    return namespace


def samples(tok, step: int):
    """Per sample (prompt ids, completion ids): G completions per prompt, the set changing with the step."""
    rows = []
    for p, prompt in enumerate(PROMPTS):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        for c in COMPLETIONS[(step - 1) * len(PROMPTS) + p]:
            rows.append((ids, tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id], prompt, c))
    return rows


def numbers(rng, n: int) -> list[float]:
    return [round(float(x), 4) for x in -np.abs(rng.normal(0.8, 0.6, n))]


def build_verl(tok, out: Path) -> None:
    with zipfile.ZipFile(WHEEL) as z:
        text = z.read("verl/trainer/ppo/ray_trainer.py").decode()
    ns = lift(text, {"_write_generations"}, {"os": os, "json": json}, cls="RayPPOTrainer")
    write = ns["_write_generations"]
    for step in (1, 2):
        rows = samples(tok, step)
        prompts = torch.full((len(rows), max(len(p) for p, *_ in rows)), tok.pad_token_id)
        responses = torch.full((len(rows), 12), tok.pad_token_id)
        for i, (p, c, _, _) in enumerate(rows):
            prompts[i, -len(p):], responses[i, :len(c)] = torch.tensor(p), torch.tensor(c)
        inputs = tok.batch_decode(prompts, skip_special_tokens=True)    # as _log_rollout_data
        outputs = tok.batch_decode(responses, skip_special_tokens=True)
        scores = [float(len(c) % 3) for _, _, _, c in rows]
        extra = {"acc": [s > 0 for s in scores], "request_id": [f"r{step}-{i}" for i in range(len(rows))]}
        write(inputs, outputs, ["4", "4", "blue", "blue"], scores, extra, str(out / "verl"), step)


def build_verl_v1(tok, out: Path) -> None:
    """verl 0.9.1's TransferQueue trainer (verl/trainer/ppo/v1/trainer_base.py): its own `_write_generations`
    (1226-1260), lifted, fed as its `_log_rollout_data` (1297-1340) feeds it: rows in the order the keys come back,
    sorted by the key `{uid}_{session_id}_{index}` (verl/trainer/ppo/v1/agent_loop_tq.py:178-193) split with
    `rsplit("_", 2)`, and the keys as the one extra column `uid`. The dataset uids hold underscores."""
    import numpy as np

    with zipfile.ZipFile(WHEEL) as z:
        text = z.read("verl/trainer/ppo/v1/trainer_base.py").decode()
    write = lift(text, {"_write_generations"}, {"os": os, "json": json, "np": np}, cls="PPOTrainer")["_write_generations"]
    uids = ["gsm8k_train_17", "gsm8k_train_4"]  # dataset uids (the trainer draws uuid4s when the data has none)
    for step in (1, 2):
        rows = samples(tok, step)
        keys = [f"{uids[i // G]}_{i % G}_0" for i in range(len(rows))]
        order = [3, 0, 2, 1]  # the order TransferQueue hands the keys back: not the prompts' order
        rows, keys = [rows[i] for i in order], [keys[i] for i in order]
        inputs = [tok.decode(p, skip_special_tokens=True) for p, *_ in rows]
        outputs = [tok.decode(c, skip_special_tokens=True) for _, c, *_ in rows]
        scores = [float(len(c) % 3) for *_, c in rows]
        gts = [None] * len(rows)  # no reward_model field in this batch
        sort_keys = []
        for key in keys:
            parts = key.rsplit("_", 2)
            if len(parts) == 3:
                sort_keys.append((parts[0], int(parts[1]), int(parts[2])))
            else:
                sort_keys.append((key, 0, 0))
        idx = sorted(range(len(sort_keys)), key=lambda i: sort_keys[i])
        write([inputs[i] for i in idx], [outputs[i] for i in idx], [gts[i] for i in idx], [scores[i] for i in idx],
              {"uid": [keys[i] for i in idx]}, str(out / "verl_v1"), step)


class _Sliced(dict):
    """`BatchedDataDict` for logging: `make_microbatch_iterator(1)` yields `{k: v[i:i+1]}` (its `slice`)."""

    def make_microbatch_iterator(self, size):
        n = len(next(iter(self.values())))
        for i in range(0, n, size):
            yield {k: v[i:i + size] for k, v in self.items()}


def build_nemo(tok, mirrors: Path, out: Path) -> None:
    text = source(mirrors, "NVIDIA-NeMo+RL", "nemo_rl/utils/logger.py")
    ns = lift(text, {"log_batched_dict_as_jsonl"}, {"os": os, "json": json, "torch": torch, "np": np,
                                                    "BatchedDataDict": _Sliced, "Any": object}, cls="Logger")
    logger = types.SimpleNamespace(base_log_dir=str(out / "nemo_rl"))
    rng = np.random.default_rng(1)
    for step in (1, 2):
        rows = samples(tok, step)
        S = -(-max(len(p) + len(c) for p, c, *_ in rows) // 8) * 8  # make_sequence_length_divisible_by 8
        ids = torch.full((len(rows), S), tok.pad_token_id)
        mask, gen, prev, adv = (torch.zeros(len(rows), S) for _ in range(4))
        rewards = torch.tensor([float(len(c) % 3) for *_, c in rows])
        for i, (p, c, _, _) in enumerate(rows):
            ids[i, :len(p) + len(c)] = torch.tensor(p + c)
            mask[i, len(p):len(p) + len(c)] = 1
            gen[i, len(p):len(p) + len(c)] = torch.tensor(numbers(rng, len(c)))
            prev[i, 1:len(p) + len(c)] = torch.tensor(numbers(rng, len(p) + len(c) - 1))
            group = rewards[i // G * G:i // G * G + G]
            adv[i, :] = (rewards[i] - group.mean()) / (group.std() + 1e-6)
        log_data = {"content": [[tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                         add_generation_prompt=True), c] for _, _, q, c in rows],
                    "rewards": rewards.tolist(), "input_lengths": torch.tensor([len(p) + len(c) for p, c, *_ in rows]).tolist(),
                    "token_ids": ids.tolist(), "token_loss_mask": mask.long().tolist(),
                    "sample_loss_mask": [1.0] * len(rows), "advantages": adv.tolist(),
                    "generation_logprobs": gen.tolist(), "prev_logprobs": prev.tolist()}
        ns["log_batched_dict_as_jsonl"](logger, _Sliced(log_data), f"train_data_step{step}.jsonl")


def build_prime(tok, mirrors: Path, out: Path) -> None:
    loss = lift(source(mirrors, "PrimeIntellect-ai+prime-rl", "src/prime_rl/trainer/rl/loss.py"),
                {"compute_importance_ratio_and_mismatch_kl"}, {"torch": torch, "Tensor": torch.Tensor})

    class DefaultLossConfig:  # prime_rl.configs.trainer's, with the two fields the exporter reads
        dppo_mask_high, dppo_mask_low = 0.2, 0.2

    stubs = {"prime_rl": types.ModuleType("prime_rl"), "prime_rl.configs": types.ModuleType("prime_rl.configs"),
             "prime_rl.configs.trainer": types.ModuleType("prime_rl.configs.trainer"),
             "prime_rl.trainer": types.ModuleType("prime_rl.trainer"),
             "prime_rl.trainer.rl": types.ModuleType("prime_rl.trainer.rl"),
             "prime_rl.trainer.rl.loss": types.ModuleType("prime_rl.trainer.rl.loss")}
    stubs["prime_rl.configs.trainer"].DefaultLossConfig = DefaultLossConfig
    stubs["prime_rl.configs.trainer"].TrainerConfig = object
    stubs["prime_rl.trainer.rl.loss"].compute_importance_ratio_and_mismatch_kl = loss["compute_importance_ratio_and_mismatch_kl"]
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        module = types.ModuleType("prime_rl_token_export")
        exec(compile(source(mirrors, "PrimeIntellect-ai+prime-rl", "src/prime_rl/trainer/rl/token_export.py"),
                     "token_export.py", "exec"), module.__dict__)
    finally:
        for k, v in saved.items():
            sys.modules.pop(k) if v is None else sys.modules.__setitem__(k, v)
    rng = np.random.default_rng(2)
    folder = out / "prime_rl"
    for step in (1, 2):
        rows = samples(tok, step)
        for rank in (0, 1):  # two ranks, one micro-batch each: two packed samples
            exporter = module.TokenExporter(folder, rank)
            mine = rows[rank * 2:rank * 2 + 2]
            ids = [t for p, c, *_ in mine for t in p + c] + [tok.pad_token_id] * 3  # packing pad, trimmed by the exporter
            T = len(ids)
            mask = [False] * T
            adv = [0.0] * T
            start = 0
            rewards = [float(len(c) % 3) for *_, c in mine]
            for (p, c, *_), r in zip(mine, rewards):
                for t in range(start + len(p), start + len(p) + len(c)):
                    mask[t] = True
                    adv[t] = r - sum(rewards) / len(rewards)
                start += len(p) + len(c)
            inference = torch.tensor(numbers(rng, T)) * torch.tensor(mask, dtype=torch.float32)
            trainer = inference + torch.tensor(rng.normal(0, 0.05, T), dtype=torch.float32)
            batch = {"input_ids": torch.tensor(ids), "position_ids": torch.tensor(
                        [i for p, c, *_ in mine for i in range(len(p) + len(c))] + [0, 1, 2]),
                     "loss_mask": torch.tensor(mask), "advantages": torch.tensor(adv),
                     "inference_logprobs": inference, "env_names": ["math"] * (T - 3) + [""] * 3}
            output = {"logprobs": trainer, "entropy": torch.tensor(np.abs(rng.normal(1.0, 0.3, T)), dtype=torch.float32)}
            exporter.export(step, 0, batch, output, [len(p) + len(c) for p, c, *_ in mine] + [3], DefaultLossConfig())
            exporter.mark_stable()


def build_skyrl(tok, mirrors: Path, out: Path) -> None:
    jax = types.ModuleType("jaxtyping")
    for name in ("Bool", "Float", "Integer"):
        setattr(jax, name, type(name, (), {"__class_getitem__": classmethod(lambda cls, item: cls)}))
    replay = types.ModuleType("skyrl.backends.skyrl_train.utils.replay_utils")
    replay.make_replay_padding_indices = lambda *a, **k: None
    name = "skyrl.backends.skyrl_train.training_batch"
    module = types.ModuleType(name)
    stubs = {"jaxtyping": jax, "skyrl.backends.skyrl_train.utils.replay_utils": replay, name: module}
    for pkg in ("skyrl", "skyrl.backends", "skyrl.backends.skyrl_train", "skyrl.backends.skyrl_train.utils"):
        stubs[pkg] = types.ModuleType(pkg)
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        exec(compile(source(mirrors, "NovaSky-AI+SkyRL", "skyrl/backends/skyrl_train/training_batch.py"),
                     "training_batch.py", "exec"), module.__dict__)
        rng = np.random.default_rng(3)
        folder = out / "skyrl" / "dumped_data"
        folder.mkdir(parents=True, exist_ok=True)
        for step in (1, 2):
            rows = samples(tok, step)
            B, R = len(rows), max(len(c) for _, c, *_ in rows)
            T = max(len(p) for p, *_ in rows) + R
            seq = torch.full((B, T), tok.pad_token_id)
            attn, resp, lmask = torch.zeros(B, T, dtype=torch.long), torch.zeros(B, R), torch.zeros(B, R)
            for i, (p, c, *_) in enumerate(rows):  # left-padded; the response right-aligned in the last R columns
                seq[i, T - len(p) - len(c):] = torch.tensor(p + c)
                attn[i, T - len(p) - len(c):] = 1
                resp[i, R - len(c):] = 1
                lmask[i, R - len(c):] = 1
            lp = lambda: torch.tensor(np.round(-np.abs(rng.normal(0.8, 0.6, (B, R))), 4), dtype=torch.float32) * resp  # noqa: E731
            rollout_lp = lp()
            adv = torch.tensor([[float(len(c) % 3) - 1.0] for *_, c in rows]) * resp
            batch = module.TrainingInputBatch({
                "sequences": seq, "attention_mask": attn, "response_mask": resp, "loss_mask": lmask,
                "rollout_logprobs": rollout_lp, "action_log_probs": rollout_lp + 0.01 * resp,
                "base_action_log_probs": lp(), "values": None, "returns": adv.clone(), "advantages": adv,
                "kl": torch.zeros(B, R)})
            batch.metadata = {"response_length": R, "policy_prompt_boundaries": [(0, 2), (2, 4)]}
            batch.save(folder / f"global_step_{step}_training_input.pkl")   # as RayPPOTrainer.dump_data
    finally:
        for k, v in saved.items():
            sys.modules.pop(k) if v is None else sys.modules.__setitem__(k, v)


def build_slime(tok, mirrors: Path, out: Path) -> None:
    text = source(mirrors, "THUDM+slime", "slime/observability/train_data_utils.py")
    ns = lift(text, {"_build_dump_payload", "_is_per_sample", "_LAYOUT_FIELDS", "_WHOLE_BATCH_FIELDS"},
              {"torch": torch, "logger": types.SimpleNamespace(warning=print)})
    rng = np.random.default_rng(4)
    folder = out / "slime" / "train_data"
    folder.mkdir(parents=True, exist_ok=True)
    for step in (1, 2):
        rows = samples(tok, step)
        f = lambda n: torch.tensor(numbers(rng, n), dtype=torch.float32)  # noqa: E731
        data = {"tokens": [torch.tensor(p + c) for p, c, *_ in rows],
                "response_lengths": [len(c) for _, c, *_ in rows], "total_lengths": [len(p) + len(c) for p, c, *_ in rows],
                "loss_masks": [torch.ones(len(c), dtype=torch.int) for _, c, *_ in rows],
                "rewards": [float(len(c) % 3) for *_, c in rows], "truncated": [0, 0, 0, 0],
                "rollout_log_probs": [f(len(c)) for _, c, *_ in rows], "log_probs": [f(len(c)) for _, c, *_ in rows],
                "ref_log_probs": [f(len(c)) for _, c, *_ in rows],
                "advantages": [torch.full((len(c),), float(len(c) % 3) - 1.0) for _, c, *_ in rows],
                "entropy": [f(len(c)).abs() for _, c, *_ in rows], "partition": [0, 1, 2, 3], "raw_reward": [0.0] * 4}
        shard = {"rank": 0, "data_parallel_rank": 0, "rollout_data": data}
        torch.save(ns["_build_dump_payload"]([shard], rollout_id=step, writer_rank=0), folder / f"{step}.pt")


BUILDERS = {"verl": (build_verl, False), "verl_v1": (build_verl_v1, False), "nemo_rl": (build_nemo, True),
            "prime_rl": (build_prime, True), "skyrl": (build_skyrl, True), "slime": (build_slime, True)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirrors", type=Path, help="folder of bare mirrors, <owner>+<name>/repo (NeMo-RL, prime-rl, "
                    "SkyRL, slime)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--only", nargs="+", choices=sorted(BUILDERS), help="build these fixtures alone")
    args = ap.parse_args()
    from inspector.weights import converted_default_policy
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(converted_default_policy())
    names = args.only or list(BUILDERS)
    if args.mirrors is None and set(names) - {"verl", "verl_v1"}:
        ap.error("--mirrors is needed for " + ", ".join(sorted(set(names) - {"verl", "verl_v1"})))
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.rmtree(args.out / name, ignore_errors=True)
        build, needs_mirrors = BUILDERS[name]
        build(tok, args.mirrors, args.out) if needs_mirrors else build(tok, args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({total / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
