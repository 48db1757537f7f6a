"""Hand-built cases for the pure tensor functions, and parity with TRL's own functions."""

from __future__ import annotations

import math

import pytest
import torch

from inspector import (
    INVALID_LOGPROB,
    entropy_from_logits,
    first_true_indices,
    masked_mean,
    masked_var,
    masked_whiten,
    token_logprobs,
    truncate_response,
)
from inspector.tensors import response_padding_mask

import trl0

PAD, EOS, STOP = 0, 2, 7


def loop_first_true(bools: torch.Tensor) -> torch.Tensor:
    """An independent reference: the first True of each row by a Python loop, the row length if none."""
    out = []
    for row in bools.reshape(-1, bools.shape[-1]).tolist():
        out.append(row.index(True) if True in row else len(row))
    return torch.tensor(out).reshape(bools.shape[:-1])


def loop_truncate(stop: int, pad: int, responses: torch.Tensor) -> torch.Tensor:
    """An independent reference of TRL's truncate_response: pad everything strictly after the first stop."""
    out = responses.clone()
    for i, row in enumerate(responses.tolist()):
        if stop in row:
            out[i, row.index(stop) + 1 :] = pad
    return out


class TestFirstTrueIndices:
    def test_hand_built_rows(self):
        bools = torch.tensor(
            [
                [False, False, True, False, True],   # first True in the middle
                [True, False, False, False, False],  # first position
                [False, False, False, False, False], # no True: the row length
                [False, False, False, False, True],  # last position
            ]
        )
        assert first_true_indices(bools).tolist() == [2, 0, 5, 4]

    def test_dtype_and_batch_dims(self):
        bools = torch.zeros(2, 3, 4, dtype=torch.bool)
        bools[1, 2, 1] = True
        out = first_true_indices(bools, dtype=torch.int32)
        assert out.dtype == torch.int32
        assert out.shape == (2, 3)
        assert out[1, 2] == 1 and out[0, 0] == 4

    def test_response_length_minus_one_idiom(self):
        responses = torch.tensor([[5, 6, EOS, EOS], [5, 6, 7, 8], [EOS, EOS, EOS, EOS]])
        lengths = first_true_indices(responses == EOS) - 1
        # pad == eos: the index stops *before* the EOS; no EOS: the last column; an immediate EOS: -1
        assert lengths.tolist() == [1, 3, -1]

    def test_random_against_loop(self):
        gen = torch.Generator().manual_seed(0)
        for _ in range(20):
            shape = (int(torch.randint(1, 6, (1,), generator=gen)), int(torch.randint(1, 12, (1,), generator=gen)))
            bools = torch.rand(shape, generator=gen) < 0.2
            assert torch.equal(first_true_indices(bools), loop_first_true(bools))

    def test_parity_with_trl(self):
        trl_utils = trl0.functions()
        gen = torch.Generator().manual_seed(1)
        for density in (0.0, 0.05, 0.3, 1.0):
            bools = torch.rand(16, 33, generator=gen) < density
            assert torch.equal(first_true_indices(bools), trl_utils.first_true_indices(bools))


class TestTruncateResponse:
    def test_stop_then_tokens_after(self):
        responses = torch.tensor([[5, STOP, 6, 8]])
        assert truncate_response(STOP, PAD, responses).tolist() == [[5, STOP, PAD, PAD]]

    def test_stop_as_first_token(self):
        responses = torch.tensor([[STOP, 5, 6, 8]])
        assert truncate_response(STOP, PAD, responses).tolist() == [[STOP, PAD, PAD, PAD]]

    def test_no_stop_left_unchanged(self):
        responses = torch.tensor([[5, 6, 8, 9]])
        out = truncate_response(STOP, PAD, responses)
        assert torch.equal(out, responses)
        assert out is not responses

    def test_pad_equals_eos(self):
        # SmolLM2, GPT-2: the stop token is the pad token; generate already filled the tail with it
        responses = torch.tensor([[5, EOS, EOS, EOS], [5, 6, EOS, 9]])
        assert truncate_response(EOS, EOS, responses).tolist() == [[5, EOS, EOS, EOS], [5, 6, EOS, EOS]]

    def test_mixed_batch_matches_loop(self):
        responses = torch.tensor(
            [
                [STOP, 5, 6, 8, 9],     # immediate stop
                [5, 6, 8, 9, 4],        # no stop
                [5, STOP, 6, STOP, 9],  # two stops: the first counts
                [5, 6, 8, 9, STOP],     # stop at the last column
            ]
        )
        assert torch.equal(truncate_response(STOP, PAD, responses), loop_truncate(STOP, PAD, responses))

    def test_random_against_loop(self):
        gen = torch.Generator().manual_seed(2)
        for _ in range(20):
            responses = torch.randint(0, 10, (6, 15), generator=gen)
            assert torch.equal(truncate_response(STOP, PAD, responses), loop_truncate(STOP, PAD, responses))


class TestTokenLogprobs:
    def test_aligned_gather(self):
        logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))  # (1, 2, 3)
        ids = torch.tensor([[1, 2]])
        out = token_logprobs(logits, ids)
        assert torch.allclose(out, torch.log(torch.tensor([[0.25, 0.8]])))

    def test_matches_full_log_softmax_in_chunks(self):
        gen = torch.Generator().manual_seed(3)
        logits = torch.randn(11, 7, 50, generator=gen)
        ids = torch.randint(0, 50, (11, 7), generator=gen)
        full = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(token_logprobs(logits, ids, chunk=3), full, atol=1e-6)

    def test_filtered_tokens_are_minus_infinity(self):
        logits = torch.tensor([[[0.0, -math.inf, 1.0]]])
        assert token_logprobs(logits, torch.tensor([[1]])).item() == -math.inf


def test_entropy():
    uniform = torch.zeros(1, 4)
    assert torch.allclose(entropy_from_logits(uniform), torch.tensor([math.log(4)]))
    certain = torch.tensor([[0.0, -math.inf, -math.inf]])  # top-k filtered: -inf counts as zero probability
    assert entropy_from_logits(certain).item() == 0.0


def test_response_padding_mask():
    mask = response_padding_mask(torch.tensor([1, 3, -1]), 4)
    assert mask.tolist() == [
        [False, False, True, True],
        [False, False, False, False],
        [True, True, True, True],  # an immediate stop with pad == eos: every response position is padding
    ]


class TestMaskedStatistics:
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -7.0, 100.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])

    def test_mean_and_var(self):
        kept = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
        assert torch.isclose(masked_mean(self.values, self.mask), kept.mean())
        assert torch.isclose(masked_var(self.values, self.mask), kept.var(unbiased=True))
        assert torch.allclose(masked_mean(self.values, self.mask, axis=1), torch.tensor([2.0, 4.5]))

    def test_whiten(self):
        kept = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
        whitened = masked_whiten(self.values, self.mask)
        expected = (kept - kept.mean()) / torch.sqrt(kept.var(unbiased=True) + 1e-8)
        assert torch.allclose(whitened[self.mask], expected, atol=1e-6)
        unshifted = masked_whiten(self.values, self.mask, shift_mean=False)
        assert torch.allclose(unshifted[self.mask], expected + kept.mean(), atol=1e-6)

    def test_degenerate_masks_raise(self):
        with pytest.raises(ValueError):
            masked_var(self.values, torch.zeros_like(self.mask))
        one = torch.zeros_like(self.mask)
        one[0, 0] = True
        with pytest.raises(ValueError):
            masked_var(self.values, one)


def test_invalid_logprob_is_trls():
    assert INVALID_LOGPROB == trl0.functions().INVALID_LOGPROB


def test_truncate_response_parity_with_trl():
    fn = trl0.functions()
    gen = torch.Generator().manual_seed(3)
    for stop in (STOP, PAD):
        responses = torch.randint(0, 8, (12, 10), generator=gen)
        assert torch.equal(truncate_response(stop, PAD, responses), fn.truncate_response(stop, PAD, responses))


def test_token_logprobs_parity_with_trls_selective_log_softmax():
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 7, 50, generator=gen) * 4
    ids = torch.randint(0, 50, (3, 7), generator=gen)
    assert torch.allclose(token_logprobs(logits, ids), trl0.functions().selective_log_softmax(logits, ids), atol=1e-6)


def test_masked_statistics_parity_with_trl():
    fn = trl0.functions()
    gen = torch.Generator().manual_seed(4)
    values = torch.randn(5, 9, generator=gen)
    mask = torch.rand(5, 9, generator=gen) < 0.6
    assert torch.allclose(masked_mean(values, mask), fn.masked_mean(values, mask))
    assert torch.allclose(masked_var(values, mask), fn.masked_var(values, mask))
    assert torch.allclose(masked_var(values, mask, unbiased=False), fn.masked_var(values, mask, unbiased=False))
    for shift in (True, False):
        assert torch.allclose(masked_whiten(values, mask, shift_mean=shift), fn.masked_whiten(values, mask, shift_mean=shift))
