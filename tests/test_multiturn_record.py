"""The multi-turn record: shapes are checked, loss_mask is completion_mask * tool_mask, a dict round-trip."""

import json

import pytest

from inspector.record.trajectory import MultiTurnRollout, Trajectory


def _traj(**kw):
    base = dict(
        token_ids=[1, 2, 3, 4, 5, 6, 7],
        role=["user", "user", "assistant", "assistant", "tool", "tool", "assistant"],
        turn=[0, 0, 1, 1, 1, 1, 2],
        sampled=[False, False, True, True, False, False, True],
        logprobs=[None, None, -0.5, -0.1, None, None, -2.0],
        completion_mask=[1, 1, 1, 1, 0],
        tool_mask=[1, 1, 0, 0, 1],
        prompt_length=2,
    )
    base.update(kw)
    return Trajectory(**base)


def test_loss_mask_is_completion_mask_times_tool_mask():
    t = _traj()
    assert t.loss_mask == [1, 1, 0, 0, 0]
    assert t.completion_ids == [3, 4, 5, 6, 7]
    assert t.prompt_ids == [1, 2]
    assert t.num_turns == 2
    assert t.turn_spans() == [(0, 0, 2), (1, 2, 6), (2, 6, 7)]


@pytest.mark.parametrize("bad", [dict(role=["user"]), dict(tool_mask=[1]), dict(prompt_length=9)])
def test_shapes_are_checked(bad):
    with pytest.raises(ValueError):
        _traj(**bad)


def test_round_trip_through_json():
    r = MultiTurnRollout(trajectories=[_traj(), _traj(group=1)], num_generations=1, tokens={3: "a"},
                         rewards_per_func=[[1.0], [0.0]], reward_func_names=["r"], reward_weights=[1.0])
    back = MultiTurnRollout.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r
