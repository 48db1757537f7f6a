"""Property-based tests of the tensor functions on random shapes, pad and stop ids."""

from __future__ import annotations

import torch

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from inspector import first_true_indices, truncate_response  # noqa: E402
from inspector.trainers.ppo import ppo_step  # noqa: E402
from inspector.tensors import response_padding_mask  # noqa: E402

shapes = st.tuples(st.integers(1, 9), st.integers(1, 40))


@st.composite
def token_batches(draw):
    b, g = draw(shapes)
    vocab = draw(st.integers(2, 12))
    ids = draw(st.lists(st.integers(0, vocab - 1), min_size=b * g, max_size=b * g))
    return torch.tensor(ids).reshape(b, g), vocab


@settings(max_examples=200, deadline=None)
@given(token_batches(), st.data())
def test_truncate_response_properties(batch, data):
    responses, vocab = batch
    stop = data.draw(st.integers(0, vocab - 1))
    pad = data.draw(st.integers(0, vocab - 1))
    out = truncate_response(stop, pad, responses)
    first = first_true_indices(responses == stop)
    for row, f, o in zip(responses.tolist(), first.tolist(), out.tolist()):
        n = len(row)
        assert o[: min(f + 1, n)] == row[: min(f + 1, n)]  # everything up to the stop stays
        assert all(x == pad for x in o[f + 1 :])          # everything after it is pad
        if f == n:
            assert o == row                               # no stop: unchanged
    assert torch.equal(truncate_response(stop, pad, out), out)  # idempotent


@settings(max_examples=200, deadline=None)
@given(shapes, st.floats(0.0, 1.0))
def test_first_true_indices_properties(shape, density):
    gen = torch.Generator().manual_seed(int(density * 1e6) + shape[0] * 100 + shape[1])
    bools = torch.rand(shape, generator=gen) < density
    idx = first_true_indices(bools)
    assert idx.shape == shape[:1]
    for row, i in zip(bools.tolist(), idx.tolist()):
        assert 0 <= i <= len(row)
        assert not any(row[:i])
        assert i == len(row) or row[i]


@settings(max_examples=100, deadline=None)
@given(token_batches(), st.data())
def test_ppo_step_masks_and_shapes(batch, data):
    responses, vocab = batch
    b, g = responses.shape
    pad = data.draw(st.integers(0, vocab - 1))
    seq = first_true_indices(responses == pad) - 1
    if int((~response_padding_mask(seq, g)).sum()) < 2:
        return  # nothing to whiten: ppo_step refuses it, tested elsewhere
    gen = torch.Generator().manual_seed(b * 1000 + g)
    lp = -torch.rand(b, g, generator=gen)
    step = ppo_step(lp, lp.clone(), torch.randn(b, g, generator=gen), torch.randn(b, generator=gen), seq,
                    (responses == pad).any(-1))
    assert torch.all(step.kl == 0)  # same model as reference
    assert torch.all(step.advantages[step.padding_mask] == 0)
    assert torch.all(step.values[step.padding_mask_p1] == 0)
    assert torch.isfinite(step.returns).all()
    assert torch.all((step.reward_positions >= 0) & (step.reward_positions < g) | (seq < 0))
