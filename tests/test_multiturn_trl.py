"""Parity with TRL 1.16's real GRPOTrainer on its multi-turn paths, on the same completions.

TRL's trainer runs on the converted default policy with the shipped qwen2_5 template. Both sides get the same
scripted completions (TRL's `_generate_single_turn` is replaced by the script; ours takes it as its generator),
so the loop semantics are compared exactly: the token stream, tool_mask, completion_mask, the rewards, the
advantages and the loss under the mask. (a) `tools`; (b) `rollout_func` returning `env_mask`.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from inspector.sources.multiturn import answered_reward, rollout_multiturn
from inspector.sources.multiturn_template import tool_chat_template
from inspector.sources.multiturn_tools import calculator
from inspector.trainers.grpo_config import GRPOConfig
from inspector.trainers.grpo_multiturn import multiturn_grpo_step, policy_logprobs, trajectory_batch

pytestmark = pytest.mark.integration

PROMPTS = ["What is 3*4?", "What is 7+5?"]
MAX_LEN = 64


def long_note(topic: str) -> str:
    """Return a long note about a topic.

    Args:
        topic: The topic.
    """
    return ("note about " + str(topic) + " ") * 20


CALL = '<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>'
# per sample: the assistant turns, in order (sample = prompt * 2 + generation)
SCRIPT = {
    0: [CALL.format(name="calculator", args='{"expression": "3*4"}'), "It is 12."],                 # call, answer
    1: ["The answer is twelve, I think."],                                                           # no call
    2: [CALL.format(name="long_note", args='{"topic": "sums"}'), "unused"],                          # result would not fit: rolled back
    3: [CALL.format(name="missing_tool", args="{}"), "Sorry, " + "I cannot do that " * 12],          # error result, cut at the limit
}


def _tokenizer():
    from transformers import AutoTokenizer

    from inspector.weights import converted_default_policy

    tok = AutoTokenizer.from_pretrained(converted_default_policy())
    tok.chat_template = tool_chat_template()
    return tok


class Script:
    """The same completions for both sides: row -> sample by the first completion it continues."""

    def __init__(self, tok, script):
        self.tok, self.script, self.first = tok, script, {}

    def ids(self, sample, turn):
        text = self.script[sample][min(turn, len(self.script[sample]) - 1)]
        return self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]

    def sample_of(self, ids):
        for s, (p, c) in self.first.items():
            if ids[: len(p) + len(c)] == p + c:
                return s
        raise AssertionError("a row continues no known sample")

    def turn_of(self, ids):
        return sum(1 for t in ids if t == self.tok.eos_token_id) // 2  # each turn and each reply end in EOS

    def __call__(self, batch, samples=None):
        outs = []
        if not self.first:
            for s, p in enumerate(batch):
                out = self.ids(s, 0)
                self.first[s] = (list(p), out)
                outs.append(out)
            return outs, None
        for ids in batch:
            s = self.sample_of(list(ids))
            p = self.first[s][0]
            outs.append(self.ids(s, self.turn_of(ids[len(p):])))
        return outs, None


def _trainer(tmp_path, tok, **kw):
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    from inspector.weights import converted_default_policy

    ds = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in PROMPTS]})
    args = TRLConfig(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4, num_generations=2,
                     max_completion_length=MAX_LEN, report_to="none", seed=0, bf16=False, logging_steps=1)
    trainer = GRPOTrainer(model=str(converted_default_policy()), processing_class=tok, reward_funcs=[answered_reward],
                          args=args, train_dataset=ds, **kw)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    return trainer, [ds[i] for i in range(len(PROMPTS)) for _ in range(2)]


def _trl_loss(trainer, out):
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, out))


def _trl_logps(trainer, out):
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    attn = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    with torch.no_grad():
        lp, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attn, out["completion_ids"].size(1))
    return lp


@pytest.fixture(scope="module")
def tools_run(tmp_path_factory):
    tok = _tokenizer()
    trainer, inputs = _trainer(tmp_path_factory.mktemp("mt"), tok, tools=[calculator, long_note])
    script = Script(tok, SCRIPT)
    trainer._generate_single_turn = lambda ids, *a, **k: script(ids)
    out = trainer._generate_and_score_completions(inputs)
    ours_tok = _tokenizer()
    ours = rollout_multiturn(Script(ours_tok, SCRIPT), ours_tok, PROMPTS, mode="tools", tools=[calculator, long_note],
                             max_turns=5, max_completion_length=MAX_LEN, num_generations=2,
                             max_model_len=trainer.model.config.max_position_embeddings)
    return SimpleNamespace(trainer=trainer, out=out, ours=ours, tok=ours_tok)


def _rows(t, mask):
    return [row[: int(m.sum())].tolist() for row, m in zip(t, mask)]


def test_tools_same_token_stream_and_masks(tools_run):
    out, ours = tools_run.out, tools_run.ours
    cm = out["completion_mask"]
    assert _rows(out["completion_ids"], cm) == [t.completion_ids for t in ours.trajectories]
    assert [r.tolist()[: len(p)] for r, p in zip(out["prompt_ids"].flip(1), [t.prompt_ids[::-1] for t in ours.trajectories])] \
        == [t.prompt_ids[::-1] for t in ours.trajectories]
    assert _rows(out["tool_mask"], cm) == [t.tool_mask for t in ours.trajectories]
    assert [t.completion_mask for t in ours.trajectories] == _rows(cm, cm)
    # the script's traps happened on both sides
    events = [t.events for t in ours.trajectories]
    assert events[0][0]["tool_outcomes"][0]["outcome"] == "ok"
    assert "rolled_back" in events[2][0]
    assert events[3][0]["tool_outcomes"][0]["outcome"] == "unknown-tool" and events[3][1].get("cut_tokens")
    assert sum(0 in t.tool_mask for t in ours.trajectories) == 2


def test_tools_same_rewards_advantages_and_loss(tools_run):
    out, ours, trainer = tools_run.out, tools_run.ours, tools_run.trainer
    batch = trajectory_batch(ours, tools_run.tok.pad_token_id, [tools_run.tok.eos_token_id])
    assert torch.equal(batch["completion_ids"], out["completion_ids"].cpu())
    assert torch.equal(batch["tool_mask"], out["tool_mask"].cpu().long())
    lp = _trl_logps(trainer, out)
    cfg = GRPOConfig(num_generations=2, max_completion_length=MAX_LEN, beta=0.0)
    step, _ = multiturn_grpo_step(ours, cfg, lp, batch=batch)
    assert torch.allclose(step.advantages, out["advantages"].cpu(), atol=1e-6)
    assert step.loss.item() == pytest.approx(_trl_loss(trainer, out), abs=1e-6)
    ours_lp = policy_logprobs(trainer.model, batch)
    mask = (batch["completion_mask"] * batch["tool_mask"]).bool()
    assert torch.allclose(ours_lp[mask], lp.cpu()[mask], atol=1e-4)


def test_reward_inputs_are_what_trl_passes(tools_run, tmp_path):
    seen = {}

    def spy(prompts, completions, completion_ids, **kwargs):
        seen.update(prompts=prompts, completions=completions, completion_ids=completion_ids, keys=sorted(kwargs))
        return [0.0] * len(prompts)

    trainer = tools_run.trainer
    trainer.reward_funcs, trainer.reward_func_names = [spy], ["spy"]
    trainer.reward_processing_classes, trainer.reward_weights = [None], torch.ones(1)
    script = Script(tools_run.tok, SCRIPT)
    trainer._generate_single_turn = lambda ids, *a, **k: script(ids)
    trainer._generate_and_score_completions([{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS for _ in range(2)])
    ours = tools_run.ours.trajectories
    assert seen["completions"] == [t.reward_input["completion"] for t in ours]
    assert seen["completion_ids"] == [t.reward_input["completion_ids"] for t in ours]
    assert seen["prompts"] == [t.reward_input["prompt"] for t in ours]
    assert set(ours[0].reward_input["kwargs"]) <= set(seen["keys"])


def test_rollout_func_env_mask(tmp_path):
    """TRL's rollout_func path with env_mask, fed our scripted-environment trajectories."""
    from transformers import AutoTokenizer

    from inspector.weights import converted_default_policy

    tok = AutoTokenizer.from_pretrained(converted_default_policy())
    script = {0: ["Twelve.", "Yes, 12."], 1: ["It is 12."], 2: ["Twelve, and " + "more words " * 20], 3: ["12", "12", "12"]}
    ours = rollout_multiturn(Script(tok, script), tok, PROMPTS, mode="scripted", max_turns=2,
                             max_completion_length=MAX_LEN, num_generations=2)

    def rollout_func(prompts, trainer):
        ts = ours.trajectories
        return {"prompt_ids": [t.prompt_ids for t in ts], "completion_ids": [t.completion_ids for t in ts],
                "logprobs": [[0.0] * len(t.completion_ids) for t in ts], "env_mask": [t.tool_mask for t in ts]}

    trainer, inputs = _trainer(tmp_path, tok, rollout_func=rollout_func)
    out = trainer._generate_and_score_completions(inputs)
    cm = out["completion_mask"]
    assert _rows(out["completion_ids"], cm) == [t.completion_ids for t in ours.trajectories]
    assert _rows(out["tool_mask"], cm) == [t.tool_mask for t in ours.trajectories]
    assert any(0 in t.tool_mask for t in ours.trajectories)
    batch = trajectory_batch(ours, tok.pad_token_id, [tok.eos_token_id])
    lp = _trl_logps(trainer, out)
    step, _ = multiturn_grpo_step(ours, GRPOConfig(num_generations=2, max_completion_length=MAX_LEN), lp, batch=batch)
    assert torch.allclose(step.advantages, out["advantages"].cpu(), atol=1e-6)
    assert step.loss.item() == pytest.approx(_trl_loss(trainer, out), abs=1e-6)
