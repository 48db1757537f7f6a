"""The views (figures, tables, token HTML) on real rollouts from the default models."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from inspector import InputError, first_true_indices, run_rollout
from inspector.views import (
    BATCH_COLUMNS,
    LOGPROB_KINDS,
    STOP_COLUMNS,
    TOKEN_CSS,
    batch_table,
    column_datatypes,
    entropy_heatmap,
    logprob_heatmap,
    sequences_html,
    split_html,
    stops_table,
    value_reward_html,
    values_figure,
)
from inspector.views._common import readable, shown, visible

pytestmark = pytest.mark.integration


# ------------------------------------------------------------------------------------------------ helpers

class Chips(HTMLParser):
    """The token chips of a view, grouped by row (`data-sample` of a tok-row, or the vr-value / vr-reward column)."""

    def __init__(self, text: str):
        super().__init__()
        self.rows: dict = {}
        self.boundaries: dict = {}
        self.key = None
        self.open = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        if "tok-row" in classes:
            self.key = int(a["data-sample"])
        elif "vr-value" in classes or "vr-reward" in classes:
            self.key = classes[-1]
        if classes[:1] == ["tok"]:
            a["classes"], a["roles"], a["text"] = set(classes), set(a.get("data-role", "").split()), ""
            self.rows.setdefault(self.key, []).append(a)
            self.open = a
        if "ctx-boundary" in classes:
            self.boundaries.setdefault(self.key, []).append(len(self.rows.get(self.key, [])))

    def handle_endtag(self, tag):
        if tag == "span":
            self.open = None

    def handle_data(self, data):
        if self.open is not None:
            self.open["text"] += data


def stop_index(r, i):
    row = r.responses[i].tolist()
    return row.index(r.stop_token_id) if r.stop_token_id in row else None


def heatmap_trace(fig):
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 1
    return heat[0]


def named(fig, name):
    return next(t for t in fig.data if t.name == name)


def resized(r, batch: int, width: int, sequence_lengths=None):
    """A consistent Rollout of `batch` x `width` built from the rows and columns of a real one (repeated), with
    sequence_lengths, contain_eos_token and score positions recomputed as run_rollout computes them."""
    assert r.reward_tokenizer_is_policy
    Q, G = r.context_length, r.response_width
    rows = torch.arange(batch) % r.batch_size
    cols = torch.arange(width) % G

    def resp(t):
        return t[rows][:, cols]

    def full(t):
        return torch.cat((t[rows][:, :Q], t[rows][:, Q:][:, cols]), dim=1)

    post = resp(r.postprocessed_responses)
    seq = first_true_indices(post == r.pad_token_id) - 1 if sequence_lengths is None else torch.as_tensor(sequence_lengths)
    changes = {name: resp(getattr(r, name)) for name in (
        "responses", "postprocessed_responses", "logprobs", "raw_logprobs", "new_logprobs", "ref_logprobs",
        "ranks", "entropy", "topk_ids", "topk_logprobs", "values")}
    changes |= {name: full(getattr(r, name)) for name in (
        "sequences", "query_responses", "postprocessed_query_responses", "reward_query_responses")}
    changes |= {name: getattr(r, name)[rows] for name in ("queries", "query_attention_mask", "scores")}
    changes |= {name: [getattr(r, name)[i] for i in rows.tolist()] for name in (
        "prompts", "prompt_index", "query_texts", "response_texts", "response_texts_raw", "postprocessed_response_texts")}
    changes |= dict(sequence_lengths=seq, score_positions=seq + Q, contain_eos_token=(post == r.eos_token_id).any(-1))
    return dataclasses.replace(r, **changes)


@pytest.fixture(scope="module")
def r(greedy_rollout):
    return greedy_rollout


@pytest.fixture(scope="module")
def truncated(models):
    """Greedy, with '.' as the stop token and no early stop (TRL 0.11 to 0.13): the response goes on after the
    first '.', which truncation cuts."""
    period = models.tokenizer.convert_tokens_to_ids(".")
    out = run_rollout(models, ["Write three short sentences about dogs.", "Hi"], max_new_tokens=20,
                      do_sample=False, seed=0, stop_token_id=period, generation_stop="never")
    assert out.stop_token_id == period
    return out


# ------------------------------------------------------------------------------------------------ token text

def test_token_strings_read_as_text():
    assert readable("Ġhello") == " hello" and readable("Ċ") == "\n" and readable("▁hi") == " hi"
    assert readable("<|im_end|>") == "<|im_end|>" and readable("<0x0A>") == "\n"
    assert readable("Ã©") == "é"
    assert visible(" a\n\tb") == "␣a↵⇥b"
    assert shown("Ġ") == "␣" and shown("") == "∅"


# ------------------------------------------------------------------------------------------------ sequences

def test_sequences_html_one_row_per_sample_one_chip_per_token(r):
    B, Q, G = r.batch_size, r.context_length, r.response_width
    page = sequences_html(r)
    chips = Chips(page)
    assert sorted(chips.rows) == list(range(B))
    assert page.count('class="tok ') == B * (Q + G)
    assert page.count('class="ctx-boundary"') == B
    assert all(chips.boundaries[i] == [Q] for i in range(B))
    for i in range(B):
        row = chips.rows[i]
        assert len(row) == Q + G
        for t, chip in enumerate(row):
            assert f"{t} · id {int(r.sequences[i, t])} ·" in chip["title"]
        assert {t for t, c in enumerate(row) if "tok-leftpad" in c["classes"]} == set(
            torch.nonzero(r.query_attention_mask[i] == 0).flatten().tolist())
        assert {t - Q for t, c in enumerate(row) if "tok-masked" in c["classes"]} == set(
            torch.nonzero(r.padding_mask[i]).flatten().tolist())
        assert {t for t, c in enumerate(row) if "tok-response" in c["classes"]} == set(range(Q, Q + G))
        stop = stop_index(r, i)
        assert [t for t, c in enumerate(row) if "stop" in c["roles"]] == ([Q + stop] if stop is not None else [])
        assert [t for t, c in enumerate(row) if "reward" in c["roles"]] == [int(r.score_positions[i])]
        leftpad = {t for t, c in enumerate(row) if "tok-leftpad" in c["classes"]}
        pads = {t for t, c in enumerate(row) if "tok-pad" in c["classes"]}
        assert pads == {Q + g for g, tid in enumerate(r.responses[i].tolist()) if tid == r.pad_token_id}
        assert {t for t, c in enumerate(row) if "tok-special" in c["classes"]} == {
            t for t, tid in enumerate(r.sequences[i].tolist()) if tid in r.special_ids and t not in leftpad | pads}


def test_sequences_html_shows_the_replaced_left_padding_and_escapes_text(r):
    page = sequences_html(r)
    assert (r.query_attention_mask == 0).any(), "the prompts differ in length, so some rows are left-padded"
    assert r.attention == "trl" and "pad→0" in page  # TRL's generate fed id 0 where the pad ids were
    # pad == eos: the chat template's EOS inside the prompt is a pad id too, so it was masked and fed as 0
    inside = (r.queries == r.pad_token_id) & (r.query_attention_mask == 1)
    replaced = [c for row in Chips(page).rows.values() for c in row if "tok-replaced" in c["classes"]]
    assert len(replaced) == int(inside.sum()) > 0
    assert torch.all(r.sequences[:, : r.context_length][inside] == 0)
    assert "&lt;|im_start|&gt;" in page and "<|im_start|>" not in page
    assert "␣" in page and "↵" in page
    assert TOKEN_CSS.count("{") == TOKEN_CSS.count("}")


def test_sequences_html_for_one_sample(r):
    Q, G = r.context_length, r.response_width
    one = Chips(sequences_html(r, 1))
    assert list(one.rows) == [1] and len(one.rows[1]) == Q + G
    with pytest.raises(IndexError):
        sequences_html(r, r.batch_size)


# ------------------------------------------------------------------------------------------------ split, value/reward

def test_split_html(r):
    for i in range(r.batch_size):
        page = split_html(r, i)
        assert f'data-sample="{i}"' in page and f"context_length {r.context_length}" in page
        for text in (r.query_texts[i], r.prompts[i], r.response_texts[i], r.postprocessed_response_texts[i]):
            assert re.sub(r"\s+", " ", _escape(text)).strip() in re.sub(r"\s+", " ", page)
        assert f"sequence_lengths {int(r.sequence_lengths[i])}" in page
    assert split_html(r, 0) != split_html(r, 1)
    with pytest.raises(IndexError):
        split_html(r, -1)


def _escape(text):
    import html

    return html.escape(text, quote=True)


def test_value_reward_html_marks_truncated_tokens(truncated):
    r = truncated
    Q = r.context_length
    assert (r.postprocessed_responses != r.responses).any(), "the '.' stop token must cut something"
    for i in range(r.batch_size):
        cut = (r.postprocessed_responses[i] != r.responses[i]).nonzero().flatten().tolist()
        page = value_reward_html(r, i)
        chips = Chips(page)
        value_side, reward_side = chips.rows["vr-value"], chips.rows["vr-reward"]
        start = Q - (len(value_side) - r.response_width)  # the few query tokens shown
        for side, ids in ((value_side, r.query_responses[i]), (reward_side, r.postprocessed_query_responses[i])):
            assert [start + k - Q for k, c in enumerate(side) if "tok-truncated" in c["classes"]] == cut
            assert all(f"{start + k} · id {int(ids[start + k])} ·" in c["title"] for k, c in enumerate(side))
        readers = [start + k for k, c in enumerate(reward_side) if "reward" in c["roles"]]
        assert readers == [int(r.score_positions[i])]
        assert not any("reward" in c["roles"] for c in value_side)
        assert f"{float(r.scores[i]):+.4f}" in page
        assert "tok-ellipsis" in page and 'class="ctx-boundary"' in page
        if cut:  # the reward model sees pads where the value model sees the babble after the stop token
            assert all(int(r.postprocessed_responses[i, g]) == r.pad_token_id for g in cut)


def test_value_reward_html_without_truncation(r):
    for i in range(r.batch_size):
        page = value_reward_html(r, i)
        assert "tok-truncated" not in re.sub(r'class="tok-legend[^"]*"', "", page)
        assert len([c for c in Chips(page).rows["vr-reward"] if "reward" in c["roles"]]) == 1


# ------------------------------------------------------------------------------------------------ figures

@pytest.mark.parametrize("which", list(LOGPROB_KINDS))
def test_logprob_heatmap(r, which):
    fig = logprob_heatmap(r, which)
    heat = heatmap_trace(fig)
    z = np.asarray(heat.z, dtype=float)
    assert z.shape == (r.batch_size, r.response_width)
    assert np.array_equal(np.isnan(z), r.padding_mask.numpy())  # NaN exactly after sequence_lengths
    expected = getattr(r, which).clamp(min=-10).numpy()
    assert np.allclose(z[~np.isnan(z)], expected[~np.isnan(z)], atol=1e-6)
    custom = np.asarray(heat.customdata, dtype=object)
    assert custom.shape[:2] == z.shape
    assert custom[..., 1].astype(int).tolist() == r.responses.tolist()
    assert custom[..., 4].astype(int).tolist() == r.ranks.tolist()
    first_alt = r.token(int(r.topk_ids[0, 0, 0]))
    assert _escape(shown(first_alt, 24)) in custom[0, 0, 5]
    assert fig.layout.title.text.startswith(which)
    assert fig.layout.template.layout.paper_bgcolor == "white"
    assert fig.layout.height >= 260


def test_heatmap_markers_and_hover_escaping(r):
    fig = logprob_heatmap(r)
    stops = [(stop_index(r, i), i) for i in range(r.batch_size) if stop_index(r, i) is not None]
    assert stops  # the greedy rollout has samples that stop
    trace = named(fig, "stop token")
    assert list(zip(trace.x, trace.y)) == stops
    reward = named(fig, "reward read")
    assert list(reward.x) == (r.score_positions - r.context_length).tolist()
    custom = np.asarray(heatmap_trace(fig).customdata, dtype=object)
    pads = (r.responses == r.pad_token_id).numpy()
    assert pads.any()  # samples of different lengths: the shorter ones are padded
    assert set(custom[..., 0][pads]) == {_escape(r.token(r.pad_token_id))}
    assert not any("<" in str(text) for text in custom[..., 0].flatten())
    with pytest.raises(InputError, match="which must be one of"):
        logprob_heatmap(r, "probs")


def test_entropy_heatmap(r):
    fig = entropy_heatmap(r)
    heat = heatmap_trace(fig)
    z = np.asarray(heat.z, dtype=float)
    assert z.shape == (r.batch_size, r.response_width)
    assert np.array_equal(np.isnan(z), r.padding_mask.numpy())
    assert np.allclose(z[~np.isnan(z)], r.entropy.numpy()[~np.isnan(z)], atol=1e-6)
    assert np.asarray(heat.customdata, dtype=object)[..., 1].astype(int).tolist() == r.responses.tolist()
    assert "entropy" in fig.layout.title.text


def test_values_figure(r):
    G = r.response_width
    tails = 0
    for i in range(r.batch_size):
        fig = values_figure(r, i)
        kept = named(fig, "values (kept by TRL)")
        last = min(G - 1, int(r.sequence_lengths[i]) + 1)  # TRL's padding_mask_p1
        assert list(kept.x) == list(range(last + 1))
        assert np.allclose(kept.y, r.values[i, : last + 1].numpy())
        names = {t.name for t in fig.data}
        if last < G - 1:  # after sequence_lengths + 1: the raw values as they are, and TRL's zeros at zero
            raw = named(fig, "raw values after sequence_lengths + 1 (unused)")
            zeros = named(fig, "what TRL uses there: 0 (padding_mask_p1)")
            assert list(raw.x) == list(zeros.x) == list(range(last + 1, G))
            assert np.allclose(raw.y, r.values[i, last + 1:].numpy())
            assert np.all(np.asarray(zeros.y) == 0)
            tails += 1
        else:
            assert not any("after sequence_lengths" in n or "TRL uses" in n for n in names)
        score = float(r.scores[i])
        assert any(math.isclose(s.y0, score, rel_tol=1e-6) for s in fig.layout.shapes)
        star = named(fig, "score (reward read here)")
        assert list(star.x) == [int(r.score_positions[i]) - r.context_length]
        assert np.isclose(star.y[0], score)
        assert fig.layout.template.layout.paper_bgcolor == "white"
    assert tails >= 1  # the fixture has a response that ends early
    with pytest.raises(IndexError):
        values_figure(r, r.batch_size)


# ------------------------------------------------------------------------------------------------ tables

def test_batch_table(r):
    df = batch_table(r)
    assert list(df.columns) == [c.name for c in BATCH_COLUMNS] and len(df) == r.batch_size
    assert column_datatypes(BATCH_COLUMNS) == ["number", "str", "str", "number", "bool"] + ["number"] * 5
    assert np.allclose(df["score"], r.scores.numpy(), atol=1e-4)
    assert df["response length"].tolist() == (r.sequence_lengths + 1).tolist()
    assert df["contains EOS"].tolist() == r.contain_eos_token.tolist()
    assert df["response"].tolist() == r.response_texts and df["prompt"].tolist() == r.prompts
    for i in range(r.batch_size):
        n = int(r.sequence_lengths[i]) + 1
        assert math.isclose(df["mean logprob"][i], float(r.logprobs[i, :n].mean()), abs_tol=1e-4)
        assert math.isclose(df["mean entropy"][i], float(r.entropy[i, :n].mean()), abs_tol=1e-4)


def test_stops_table(r):
    df = stops_table(r)
    assert list(df.columns) == [c.name for c in STOP_COLUMNS] and len(df) == r.batch_size
    assert len(column_datatypes(STOP_COLUMNS)) == len(STOP_COLUMNS)
    for i in range(r.batch_size):
        row = df.iloc[i]
        assert row["first stop index"] == (stop_index(r, i) if stop_index(r, i) is not None else "none")
        pads = r.postprocessed_responses[i].tolist()
        first_pad = pads.index(r.pad_token_id) if r.pad_token_id in pads else None
        assert row["first pad index"] == (first_pad if first_pad is not None else "none")
        assert row["sequence_lengths"] == int(r.sequence_lengths[i])
        if first_pad is not None:
            assert row["sequence_lengths"] == first_pad - 1
        assert row["contain_eos_token"] == bool(r.contain_eos_token[i])
        pos = int(r.score_positions[i])
        read = int(r.reward_query_responses[i, pos])
        assert row["score position"] == pos and row["score response index"] == pos - r.context_length
        assert row["score token"] == shown(r.token(read))
        assert row["score token is special"] == (read in r.special_ids)
    json.dumps(df.to_dict(orient="split"))  # what a UI table sends: no NA objects


def test_stops_table_with_a_stop_token_that_is_not_eos(truncated):
    df = stops_table(truncated)
    for i in range(truncated.batch_size):
        assert df["first stop index"][i] == (stop_index(truncated, i) if stop_index(truncated, i) is not None else "none")
        if stop_index(truncated, i) is not None:  # pad == eos: the pad after the '.' ends the response there
            assert df["sequence_lengths"][i] == stop_index(truncated, i)
            assert df["score token"][i] == "."


def test_a_reward_model_with_its_own_tokenizer(r):
    """Its positions index its own tokens: marked only in the value/reward view, never on the policy's tokens."""
    other = dataclasses.replace(r, reward_tokenizer_is_policy=False, reward_tokens=dict(r.tokens))
    assert "reward" not in {role for row in Chips(sequences_html(other)).rows.values() for c in row for role in c["roles"]}
    assert "reward read" not in {t.name for t in logprob_heatmap(other).data}
    assert "score (reward read here)" not in {t.name for t in values_figure(other, 0).data}
    for i in range(other.batch_size):
        page = value_reward_html(other, i)
        reward_side = Chips(page).rows["vr-reward"]
        shown_query = len(reward_side) - (other.reward_query_responses.shape[1] - other.reward_context_length)
        start = other.reward_context_length - shown_query
        assert [start + k for k, c in enumerate(reward_side) if "reward" in c["roles"]] == [int(other.score_positions[i])]
        assert "reward_query_responses" in page
    assert stops_table(other)["score token"].tolist() == stops_table(r)["score token"].tolist()


# ------------------------------------------------------------------------------------------------ edge sizes

def all_views(r, sample=0):
    return [sequences_html(r), split_html(r, sample), value_reward_html(r, sample), logprob_heatmap(r),
            entropy_heatmap(r), values_figure(r, sample), batch_table(r), stops_table(r)]


def test_views_of_one_token_and_of_an_empty_response(r):
    tiny = resized(r, 1, 1)
    views = all_views(tiny)
    assert np.asarray(heatmap_trace(views[3]).z).shape == (1, 1)
    # an immediate stop: sequence_lengths -1, the score read at the last query token
    empty = resized(r, 2, 4, sequence_lengths=[-1, 3])
    views = all_views(empty)
    z = np.asarray(heatmap_trace(views[3]).z, dtype=float)
    assert np.isnan(z[0]).all() and not np.isnan(z[1]).any()
    assert list(named(views[3], "reward read").x) == [-1, 3]
    assert math.isnan(views[6]["mean logprob"][0]) and not math.isnan(views[6]["mean logprob"][1])
    seq = Chips(views[0]).rows[0]
    assert [t for t, c in enumerate(seq) if "reward" in c["roles"]] == [r.context_length - 1]
    assert "empty response" in views[2]


def test_payload_of_a_large_rollout_stays_small(r):
    """16 samples x 512 tokens: everything the page shows at once, well under 5 MB (sizes are printed)."""
    big = resized(r, 16, 512)
    started = time.perf_counter()
    views = all_views(big, sample=3)
    built = time.perf_counter() - started
    sizes = {}
    for k, view in enumerate(views):
        if isinstance(view, go.Figure):
            sizes[k] = len(view.to_json())
        elif isinstance(view, pd.DataFrame):
            sizes[k] = len(view.to_json())
        else:
            sizes[k] = len(view.encode())
    total = sum(sizes.values())
    print(f"16x512 views: built in {built:.2f} s, {total / 1e6:.2f} MB ({sizes})")
    assert total < 5_000_000
    assert np.asarray(heatmap_trace(views[3]).z).shape == (16, 512)


def test_numbers_print_without_negative_zeros():
    from inspector.views._common import fmt, plural

    assert [fmt(x) for x in (-0.0, -1e-9, -0.0004, 0.0004)] == ["0.000"] * 4
    assert [fmt(x, signed=True) for x in (-0.0, -1e-9, 1e-9)] == ["0.000"] * 3
    assert fmt(-0.0005, signed=True) == "-0.001" and fmt(0.25, signed=True) == "+0.250" and fmt(-2.5, 1) == "-2.5"
    assert fmt(-0.0, 2, sci=True) == "0.00e+00" and fmt(-3e-9, 2, sci=True) == "-3.00e-09"
    assert (fmt(None), fmt(float("nan")), fmt(float("-inf")), fmt(float("inf"))) == ("none", "nan", "-inf", "inf")
    assert (plural(1, "sample"), plural(0, "sample"), plural(2, "sample")) == ("1 sample", "0 samples", "2 samples")
