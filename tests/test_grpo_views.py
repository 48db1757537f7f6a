"""The GRPO views on a real rollout of the default models made for GRPO: 3 arithmetic prompts x 4 completions at a
low temperature, scored by the exact-answer reward (groups 1 and 2 have equal rewards: zero std)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from inspector.trainers.grpo_config import GRPOConfig, LOSS_TYPES
from inspector.trainers.grpo import rollout_grpo_step
from inspector.trainers.rewards import arithmetic_prompts, exact_answer_reward, make_length_reward, score_rewards
from inspector.views.grpo import (
    grpo_groups_html,
    grpo_metrics_table,
    kl_entropy_figure,
    loss_type_figure,
    loss_type_table,
    sampler_correction_figure,
    token_weights_heatmap,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def grpo_rollout(models):
    from inspector import run_rollout

    # made for GRPO (its masks and entropies): at T = 0.3, seed 1, group 0 is mixed and groups 1 and 2 zero-std
    return run_rollout(models, arithmetic_prompts(3), samples_per_prompt=4, max_new_tokens=16, temperature=0.3, seed=1,
                       trainer="grpo")


@pytest.fixture(scope="module")
def table(grpo_rollout, models):
    return score_rewards(grpo_rollout, [exact_answer_reward, make_length_reward(8)], [1.0, 0.0], tokenizer=models.tokenizer)


def _step(r, table, **config):
    config = GRPOConfig(num_generations=4, reward_weights=tuple(table.weights), **config)
    return rollout_grpo_step(r, table.rewards_per_func, config, reward_func_names=table.names)


def test_group_panel_flags_the_zero_std_groups(grpo_rollout, table):
    step = _step(grpo_rollout, table)
    html = grpo_groups_html(grpo_rollout, step)
    assert html.count(" data-group=") == 3
    assert "class='grpo-group' data-group='0'" in html  # rewards differ in group 0
    assert "class='grpo-group zero-std' data-group='1'" in html and "class='grpo-group zero-std' data-group='2'" in html
    assert html.count("zero std: every advantage is 0") == 2
    assert "exact_answer_reward" in html and "length_reward" in html and "×0" in html
    for i in range(12):
        assert f"data-sample='{i}'" in html
    # a None reward is shown as None, not as 0
    none_table = table.rewards_per_func.clone()
    none_table[5, 0] = math.nan
    step = rollout_grpo_step(grpo_rollout, none_table, GRPOConfig(num_generations=4, reward_weights=(1.0, 0.0)),
                             reward_func_names=table.names)
    assert "<td class='none'>None</td>" in grpo_groups_html(grpo_rollout, step)


def test_token_weight_heatmap_has_a_row_per_completion_and_a_column_per_position(grpo_rollout, table):
    step = _step(grpo_rollout, table, loss_type="grpo")
    fig = token_weights_heatmap(grpo_rollout, step)
    heat = fig.data[0]
    z = np.array(heat.z, dtype=float)
    assert z.shape == (12, grpo_rollout.response_width)
    mask = step.completion_mask.bool().numpy()
    assert np.isnan(z[~mask]).all() and np.isfinite(z[mask]).all()
    np.testing.assert_allclose(z[mask], step.token_weights.numpy()[mask])
    assert (z[4:][mask[4:]] == 0).all()  # zero-std groups weigh nothing
    first = grpo_rollout.token(int(grpo_rollout.responses[0, 0]))
    assert heat.text[0][0].strip() and heat.text[0][0] in (first, first.replace("Ġ", "␣"))  # the token
    custom = np.array(heat.customdata, dtype=float)
    assert custom.shape == (12, grpo_rollout.response_width, 5)
    np.testing.assert_allclose(custom[:, 0, 0], step.advantages.numpy(), rtol=1e-6)  # its advantage
    np.testing.assert_array_equal(custom[..., 3], mask.astype(float))  # its mask
    np.testing.assert_allclose(custom[..., 1], step.importance_sampling_ratio.expand(12, grpo_rollout.response_width).numpy(), rtol=1e-6)
    assert "advantage" in heat.hovertemplate and "sampler ratio %{customdata[1]" in heat.hovertemplate


def test_loss_types_side_by_side_show_the_length_bias(grpo_rollout, table):
    config = GRPOConfig(num_generations=4, reward_weights=tuple(table.weights))
    frame = loss_type_table(grpo_rollout, table.rewards_per_func, config, reward_func_names=table.names,
                            use_sampler_logprobs=False)  # no sampler ratio: the weights are the loss's alone
    assert list(frame["loss_type"]) == list(LOSS_TYPES)
    ratio = dict(zip(frame["loss_type"], frame["long / short"]))
    short, long = (int(x.split("(")[1].rstrip(")")) for x in frame.iloc[0][["short (tokens)", "long (tokens)"]])
    assert long > short
    assert ratio["grpo"] == pytest.approx(short / long, rel=1e-4)  # per-sequence mean: long tokens count less
    assert ratio["dapo"] == pytest.approx(1.0) and ratio["dr_grpo"] == pytest.approx(1.0)
    fig = loss_type_figure(frame)
    assert len(fig.data) == 2 and list(fig.data[0].x) == list(LOSS_TYPES)


def test_kl_entropy_sampler_and_metrics(grpo_rollout, table):
    step = _step(grpo_rollout, table, top_entropy_quantile=0.5, beta=0.04)
    fig = kl_entropy_figure(grpo_rollout, step)
    ent = np.array(fig.data[1].z, dtype=float)
    mask = step.completion_mask.bool().numpy()
    assert set(np.unique(ent[mask])) <= {0.0, 1.0} and 0 < np.nansum(ent) < mask.sum()
    sampler = sampler_correction_figure(grpo_rollout, step)
    assert step.sampler is not None and len(sampler.data) == 2  # raw and applied ratio per completion
    assert len(sampler.data[0].y) == 12
    metrics = dict(zip(*grpo_metrics_table(step).T.values))
    for name in ("frac_reward_zero_std", "reward", "reward_std", "completions/mean_length", "kl", "entropy",
                 "rewards/exact_answer_reward/mean", "sampling/importance_sampling_ratio/mean", "loss"):
        assert name in metrics, name
    assert metrics["frac_reward_zero_std"] == pytest.approx(8 / 12)


def test_views_refuse_a_step_of_another_rollout(grpo_rollout, table):
    step = _step(grpo_rollout, table)
    other = torch.zeros(4, 3)
    bad = type(step)(**{**step.__dict__, "token_weights": other, "advantages": torch.zeros(4)})
    from inspector.errors import InputError

    with pytest.raises(InputError, match="another rollout"):
        token_weights_heatmap(grpo_rollout, bad)
