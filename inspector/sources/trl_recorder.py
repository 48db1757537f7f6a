"""Record a TRL 1.16 `GRPOTrainer` run in the inspector's own run format, with the exact tensors the trainer used.

    from trl import GRPOTrainer
    from inspector.sources.trl_recorder import record_run

    trainer = GRPOTrainer(...)
    record_run(trainer, "runs/my-run")      # before trainer.train()
    trainer.train()
    # then: python -m inspector run runs/my-run   (or open the folder in the app's run view)

How: `record_run` wraps two methods of this one trainer object (nothing global is patched):
- `_calculate_rewards` (trl/trainer/grpo_trainer.py:1579): its return value, `rewards_per_func` (B, F), gathered
  across processes, raw and unweighted, as the advantages are computed from it (2753-2826);
- `_generate_and_score_completions` (2324-2937): its output dict, which `_prepare_inputs` (1522-1547) then
  shuffles and splits into the batches `_compute_loss` trains on: `prompt_ids`, `prompt_mask`, `completion_ids`,
  `completion_mask`, `tool_mask` (multi-turn tools / `env_mask`), `sampling_per_token_logps` (vLLM or a
  `rollout_func`'s logprobs), `old_per_token_logps` (the trainer's logprobs before the update, computed when
  `num_iterations > 1`, `steps_per_generation` does not divide the accumulation, or with vLLM importance
  sampling; otherwise TRL uses the loss's own logprobs and the file has none), `ref_per_token_logps` (beta > 0)
  and `advantages`;
- with `entropy=True` (the default), the policy's full-vocabulary entropy at each completion token, computed by
  TRL's own `_get_per_token_logps_and_entropies(..., compute_entropy=True)` (1419) on the generation's ids and
  mask under `torch.no_grad()`: what the first `_compute_loss` on these rows computes (3030), before any update.
  It costs one forward pass per generation; `entropy=False` leaves it out.
One file is written per generation, in training mode only (evaluation batches are not recorded), named by the
optimizer step that first trains on it (`trainer.state.global_step + 1`): with `num_iterations=2` the run holds
steps 1, 3, 5, ... Reward names and weights are `trainer.reward_func_names` and `trainer.reward_weights`. Only
the main process writes, and only its own slice of the batch (rewards are sliced to it as TRL slices them).
"""

from __future__ import annotations

from pathlib import Path

from .runs.native import RunWriter


def _name(path) -> str | None:
    """A model's name without the local folder it was loaded from (a Hub id stays whole)."""
    if not path:
        return None
    p = Path(str(path))
    return p.name if p.is_absolute() or str(path).startswith((".", "~")) else str(path)


def _step_extra(trainer, output: dict) -> dict:
    tok = getattr(trainer, "processing_class", None)
    tok = getattr(tok, "tokenizer", tok)
    eos = getattr(trainer, "eos_token_id", None) or getattr(tok, "eos_token_id", None)
    return {"global_step": int(trainer.state.global_step), "num_generations": int(trainer.num_generations),
            "pad_token_id": getattr(tok, "pad_token_id", None),
            "eos_token_ids": [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])] if eos is not None else None,
            "model": _name(getattr(getattr(trainer.model, "config", None), "_name_or_path", None)),
            "tokenizer": _name(getattr(tok, "name_or_path", None)),
            "scale_rewards": str(getattr(trainer, "scale_rewards", "")),
            "multi_objective_aggregation": str(getattr(trainer, "multi_objective_aggregation", "")),
            "temperature": float(getattr(trainer, "temperature", 1.0))}


def _entropies(trainer, output: dict):
    """TRL's own entropies of the completion tokens, on the generation's ids and mask (no gradient)."""
    import torch
    from trl.models.utils import disable_gradient_checkpointing

    ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
    mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
    # as TRL computes its old logprobs (grpo_trainer.py:2634): no gradient, checkpointing off for the pass
    with torch.no_grad(), disable_gradient_checkpointing(trainer.model, trainer.args.gradient_checkpointing_kwargs):
        _, entropies, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, mask, output["completion_ids"].size(1), compute_entropy=True)
    return entropies


def record_run(trainer, folder, *, on_step=None, entropy: bool = True) -> RunWriter:
    """Make `trainer` (a TRL 1.16 GRPOTrainer) write each training generation to `folder` as a run step.
    `on_step(step, output, rewards_per_func)` is called after each write (for tests and progress); `entropy`: also
    record the policy's per-token entropy (one forward pass per generation). Returns the RunWriter. Call before
    `trainer.train()`."""
    writer = RunWriter(Path(folder))
    generate, calculate = trainer._generate_and_score_completions, trainer._calculate_rewards
    captured: dict = {}

    def calculate_rewards(*args, **kwargs):
        captured["rewards_per_func"] = calculate(*args, **kwargs)
        return captured["rewards_per_func"]

    def generate_and_score(*args, **kwargs):
        captured.clear()
        output = generate(*args, **kwargs)
        if not trainer.model.training:
            return output
        # on every process, as TRL runs its own passes: a sharded model (ZeRO-3, FSDP) forwards on all or none
        entropies = _entropies(trainer, output) if entropy else None
        if not trainer.accelerator.is_main_process:
            return output
        rewards = captured["rewards_per_func"]
        B = output["completion_ids"].size(0)
        start = trainer.accelerator.process_index * B  # the slice TRL keeps of the gathered rewards
        step = int(trainer.state.global_step) + 1
        writer.write_step(
            step, prompt_ids=output["prompt_ids"], prompt_mask=output["prompt_mask"],
            completion_ids=output["completion_ids"], completion_mask=output["completion_mask"],
            tool_mask=output.get("tool_mask"), sampling_logprobs=output.get("sampling_per_token_logps"),
            old_logprobs=output.get("old_per_token_logps"), ref_logprobs=output.get("ref_per_token_logps"),
            entropy=entropies, advantages=output["advantages"], rewards_per_func=rewards[start:start + B],
            reward_func_names=list(trainer.reward_func_names),
            reward_weights=[float(w) for w in trainer.reward_weights.tolist()],
            extra=_step_extra(trainer, output))
        if on_step is not None:
            on_step(step, output, rewards[start:start + B])
        return output

    trainer._calculate_rewards = calculate_rewards
    trainer._generate_and_score_completions = generate_and_score
    return writer


__all__ = ["record_run"]
