"""TRL 0.x's own PPO code, read from its published wheel and executed as it is.

`scripts/setup.sh --dev` downloads the pinned wheel (never installed: the environment keeps TRL 1.x). The
functions are taken from the wheel's source by name and the rollout part of `PPOTrainer.train` by its
statements, then executed in a namespace that holds torch and the trainer's attributes. Anything that
cannot be found raises, so a test that uses this module fails rather than skips.
"""

from __future__ import annotations

import ast
import gc
import math
import os
import time
import zipfile
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Union

import torch

VERSION = "0.21.0"
WHEEL = f"trl-{VERSION}-py3-none-any.whl"
UTILS = ("first_true_indices", "get_reward", "forward", "truncate_response", "generate", "batch_generation",
         "selective_log_softmax", "pad")
CORE = ("masked_mean", "masked_var", "masked_whiten")
LOGGED = ("objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward",
          "objective/scores", "val/num_eos_tokens")


def wheel_path() -> Path:
    cache = Path(os.environ.get("INSPECTOR_CACHE_DIR", Path.home() / ".cache" / "rollout-inspector"))
    path = cache / "wheels" / WHEEL
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `bash scripts/setup.sh --dev` (it downloads TRL {VERSION}).")
    return path


@lru_cache(maxsize=None)
def source(member: str) -> str:
    with zipfile.ZipFile(wheel_path()) as z:
        return z.read(member).decode()


def _functions(src: str, names: tuple[str, ...]) -> list[ast.stmt]:
    tree = ast.parse(src)
    found = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names}
    missing = set(names) - set(found)
    if missing:
        raise LookupError(f"TRL {VERSION}'s source has no function(s) {sorted(missing)}")
    for node in found.values():
        node.decorator_list = [d for d in node.decorator_list if "no_grad" in ast.unparse(d)]
    return [found[n] for n in names]


def _constant(src: str, name: str) -> ast.stmt:
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return node
    raise LookupError(f"TRL {VERSION}'s ppo_trainer.py has no {name}")


def _exec(nodes: list[ast.stmt], namespace: dict, label: str) -> dict:
    module = ast.Module(body=nodes, type_ignores=[])
    exec(compile(ast.fix_missing_locations(module), f"<TRL {VERSION} {label}>", "exec"), namespace)
    return namespace


@lru_cache(maxsize=None)
def functions() -> SimpleNamespace:
    """TRL's tensor functions: utils' get_reward, forward, batch_generation, ... and core's masked_whiten, ..."""
    from transformers import GenerationConfig

    ns: dict[str, Any] = {"torch": torch, "Optional": Optional, "Union": Union, "Any": Any, "math": math,
                          "GenerationConfig": GenerationConfig, "np": __import__("numpy")}
    _exec(_functions(source("trl/core.py"), CORE), ns, "core.py")
    _exec(_functions(source("trl/trainer/utils.py"), UTILS), ns, "trainer/utils.py")
    _exec([_constant(source("trl/trainer/ppo_trainer.py"), "INVALID_LOGPROB")], ns, "INVALID_LOGPROB")
    return SimpleNamespace(**{k: ns[k] for k in (*CORE, *UTILS, "INVALID_LOGPROB")})


def _trainer_class() -> ast.ClassDef:
    for node in ast.parse(source("trl/trainer/ppo_trainer.py")).body:
        if isinstance(node, ast.ClassDef) and node.name == "PPOTrainer":
            return node
    raise LookupError(f"TRL {VERSION} has no PPOTrainer")


def _method(name: str) -> ast.FunctionDef:
    for node in _trainer_class().body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise LookupError(f"TRL {VERSION}'s PPOTrainer has no {name}")


def _assigns(node: ast.stmt, name: str) -> bool:
    targets = node.targets if isinstance(node, ast.Assign) else []
    return any(isinstance(t, ast.Name) and t.id == name for t in targets)


def stop_token_statement() -> ast.stmt:
    """The `__init__` statement that sets the policy's generation `eos_token_id` to the stop token."""
    for node in _method("__init__").body:
        if isinstance(node, ast.If) and "stop_token" in ast.unparse(node.test):
            return node
    raise LookupError(f"TRL {VERSION}'s PPOTrainer.__init__ does not set the stop token")


def train_parts() -> SimpleNamespace:
    """From `PPOTrainer.train`: the GenerationConfig statement, the rollout block (the first `with
    torch.no_grad()` of the update loop: generation, logprobs, reference, values, scores, truncation, KL,
    rewards, whitening, GAE) and the logged metrics of the second one."""
    train = _method("train")
    config = next((n for n in train.body if _assigns(n, "generation_config")), None)
    loop = next((n for n in train.body if isinstance(n, ast.For) and ast.unparse(n.target) == "update"), None)
    if config is None or loop is None:
        raise LookupError(f"TRL {VERSION}'s PPOTrainer.train has no generation_config / update loop")
    blocks = [n for n in loop.body if isinstance(n, ast.With) and "no_grad" in ast.unparse(n.items[0])]
    if len(blocks) < 2:
        raise LookupError(f"TRL {VERSION}'s PPOTrainer.train: the update loop lost its no_grad blocks")
    rollout, logging = blocks[0].body, blocks[1].body
    start = next((i for i, n in enumerate(rollout) if _assigns(n, "contain_eos_token")), None)
    if start is None:
        raise LookupError(f"TRL {VERSION}'s rollout block has no contain_eos_token")
    wanted_means = {"mean_kl", "mean_entropy", "mean_non_score_reward", "rlhf_reward"}
    metrics = [n for n in logging if any(_assigns(n, m) for m in wanted_means | {"metrics"})]
    metrics += [n for n in logging if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Subscript)
                and ast.unparse(n.targets[0].slice).strip("'\"") in LOGGED]
    if len(metrics) != len(wanted_means) + 1 + len(LOGGED):
        raise LookupError(f"TRL {VERSION}'s logged metrics changed: found {[ast.unparse(n)[:40] for n in metrics]}")
    return SimpleNamespace(config=config, rollout=rollout, post=rollout[start:], metrics=metrics)


def _args(ppo_config, temperature: float, response_length: int, batch: int) -> SimpleNamespace:
    c = ppo_config
    return SimpleNamespace(
        kl_coef=c.kl_coef, kl_estimator=c.kl_estimator, gamma=c.gamma, lam=c.lam, whiten_rewards=c.whiten_rewards,
        missing_eos_penalty=c.missing_eos_penalty, temperature=temperature, response_length=response_length,
        local_rollout_forward_batch_size=batch, ds3_gather_for_generation=True,
    )


def _namespace(args, stop_token_id, tokenizer, **extra) -> dict:
    fn = functions()
    trainer = SimpleNamespace(args=args, stop_token_id=stop_token_id, processing_class=tokenizer,
                              accelerator=SimpleNamespace(gather_for_metrics=lambda t: t, unwrap_model=lambda m: m),
                              null_ref_context=nullcontext)
    return {"torch": torch, "gc": gc, "time": time, "empty_cache": lambda: None, "self": trainer, "args": args,
            "processing_class": tokenizer, **vars(fn), **extra}


def _metrics(parts, ns: dict) -> dict:
    logged = _exec(parts.metrics, ns, "PPOTrainer.train metrics")["metrics"]
    return {k: float(logged[k]) for k in LOGGED}


def post_rollout(ppo_config, tokenizer, *, responses, postprocessed_responses, logprobs, ref_logprobs,
                 sequence_lengths, scores, values) -> dict:
    """TRL's rollout block from `contain_eos_token` to the whitened advantages, and its logged metrics, fed
    the given per-token tensors (as the first half of the block leaves them)."""
    parts = train_parts()
    args = _args(ppo_config, 1.0, responses.shape[1], responses.shape[0])
    ns = _namespace(args, None, tokenizer, responses=responses, postprocessed_responses=postprocessed_responses,
                    logprobs=logprobs.clone(), ref_logprobs=ref_logprobs.clone(), sequence_lengths=sequence_lengths,
                    scores=scores.clone(), values=values.clone())
    _exec(parts.post, ns, "PPOTrainer.train rollout")
    return ns | {"metrics": _metrics(parts, ns)}


def run_rollout_block(models, queries: torch.Tensor, ppo_config, *, temperature: float, response_length: int,
                      seed: int, stop_token="eos", stop_token_id=None, top_k=None) -> dict:
    """TRL's whole rollout as `PPOTrainer.train` runs it, on real models: the stop-token setup of `__init__`,
    the GenerationConfig of `train` (with `top_k` set on it when given: what a trainer sampling with top-k
    would record), then the rollout block and the metrics. The policy's generation config is restored after."""
    parts = train_parts()
    tok = models.tokenizer
    args = _args(ppo_config, temperature, response_length, queries.shape[0])
    args.stop_token, args.stop_token_id = stop_token, stop_token_id
    policy = models.policy
    saved = policy.generation_config.eos_token_id
    init = SimpleNamespace(policy_model=policy)
    try:
        ns = _exec([stop_token_statement()], {"self": init, "args": args, "processing_class": tok}, "PPOTrainer.__init__")
        model = SimpleNamespace(policy=policy, value_model=models.value)
        ns = _namespace(args, init.stop_token_id, tok, GenerationConfig=__import__("transformers").GenerationConfig,
                        data={"input_ids": queries}, device=queries.device, model=model, ref_policy=None,
                        reward_model=models.reward, unwrap_model_for_generation=_unwrap, accelerator=
                        SimpleNamespace(unwrap_model=lambda m: m, gather_for_metrics=lambda t: t))
        ns["self"].model = model
        _exec([parts.config], ns, "PPOTrainer.train generation_config")
        if top_k is not None:
            ns["generation_config"].top_k = top_k
        torch.manual_seed(seed)
        _exec(parts.rollout, ns, "PPOTrainer.train rollout")
    finally:
        policy.generation_config.eos_token_id = saved
    return ns | {"metrics": _metrics(parts, ns), "stop_token_id": init.stop_token_id}


@contextmanager
def _unwrap(model, accelerator, gather_deepspeed3_params=True):
    yield model
