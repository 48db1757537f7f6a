"""Multi-turn findings on hand-built trajectories: each fires on the trap and stays silent without it."""

from __future__ import annotations

import pytest

from inspector.diagnostics.drift import align
from inspector.diagnostics.multiturn import multiturn_findings
from inspector.record.trajectory import Trajectory

EOS = 2
VOCAB = {1: "<|im_start|>", 2: "<|im_end|>", 3: "\n", 4: "user", 5: "assistant", 6: "Hi", 7: " there",
         8: "<tool_call>", 9: "{...}", 10: "</tool_call>", 11: "<tool_response>", 12: "12", 13: "</tool_response>",
         14: "It", 15: " is", 16: " 12"}


def decode(ids):
    return "".join(VOCAB[i] for i in ids)


# (id, role, turn, sampled, tool_mask) -- TRL's layout: the tool suffix holds the newline after the model's
# <|im_end|>, the tool turn and the next assistant header, all mask 0.
CLEAN = [
    (1, "user", 0, 0, None), (4, "user", 0, 0, None), (3, "user", 0, 0, None), (6, "user", 0, 0, None),
    (2, "user", 0, 0, None), (3, "user", 0, 0, None), (1, "assistant", 0, 0, None), (5, "assistant", 0, 0, None),
    (3, "assistant", 0, 0, None),
    (8, "assistant", 1, 1, 1), (9, "assistant", 1, 1, 1), (10, "assistant", 1, 1, 1), (2, "assistant", 1, 1, 1),
    (3, "tool", 1, 0, 0), (1, "tool", 1, 0, 0), (4, "tool", 1, 0, 0), (3, "tool", 1, 0, 0), (11, "tool", 1, 0, 0),
    (12, "tool", 1, 0, 0), (13, "tool", 1, 0, 0), (2, "tool", 1, 0, 0), (3, "tool", 1, 0, 0), (1, "tool", 1, 0, 0),
    (5, "tool", 1, 0, 0), (3, "tool", 1, 0, 0),
    (14, "assistant", 2, 1, 1), (15, "assistant", 2, 1, 1), (16, "assistant", 2, 1, 1), (2, "assistant", 2, 1, 1),
]
PROMPT = 9


def build(rows=CLEAN, events=None, **over) -> Trajectory:
    rows = [list(r) for r in rows]
    for k, v in over.items():                      # e.g. tm_13=1 sets the tool_mask at absolute index 13
        field, idx = k.rsplit("_", 1)
        col = {"tm": 4, "sampled": 3, "role": 1, "id": 0}[field]
        rows[int(idx)][col] = v
    comp = rows[PROMPT:]
    return Trajectory(
        token_ids=[r[0] for r in rows], role=[r[1] for r in rows], turn=[r[2] for r in rows],
        sampled=[bool(r[3]) for r in rows], logprobs=[-0.1 if r[3] else None for r in rows],
        completion_mask=[1] * len(comp), tool_mask=[r[4] for r in comp], prompt_length=PROMPT,
        events=events or [{"turn": 1, "kind": "assistant"}, {"turn": 2, "kind": "assistant"}])


def codes(traj, **kw):
    return {f.code: f for f in multiturn_findings([traj], eos_token_ids=[EOS], decode=decode, **kw)}


def test_clean_trajectory_is_silent():
    assert codes(build()) == {}


def test_tool_tokens_in_the_loss():
    f = codes(build(tm_17=1, tm_18=1))["mt-tool-tokens-trained"]
    assert f.positions == [(0, 17), (0, 18)] and f.turns == [(0, 1)]
    assert "tool_mask" in f.fix


def test_closing_eos_masked_out():
    f = codes(build(tm_28=0))["mt-eos-masked"]
    assert f.positions == [(0, 28)] and f.turns == [(0, 2)]
    assert set(codes(build(tm_12=0))) == {"mt-eos-masked"}


def test_header_tokens_trained():
    # a reader that labels the next assistant header "assistant" with mask 1 (not sampled)
    t = build(role_22="assistant", role_23="assistant", role_24="assistant", tm_22=1, tm_23=1, tm_24=1)
    f = codes(t)["mt-header-trained"]
    assert f.positions == [(0, 22), (0, 23), (0, 24)]
    assert "mt-tool-tokens-trained" not in codes(t)


def test_drift_findings_from_the_alignment():
    t = build()
    d = align(t.token_ids, t.token_ids[:10] + [99] + t.token_ids[11:])
    d.update(retokenized=[], think_dropped=[])
    f = codes(t, drifts={0: d})["mt-drift"]
    assert f.positions == [(0, 10)] and f.turns == [(0, 1)]
    same = align(t.token_ids, t.token_ids)
    same.update(retokenized=[], think_dropped=[])
    assert codes(t, drifts={0: same}) == {}


def test_retokenization_and_think_findings():
    t = build()
    d = {"first_diff": None, "differing": 0, "retokenized": [{"turn": 2, "first_diff": 25, "start": 25}],
         "think_dropped": [{"turn": 1, "start": 9, "end": 13, "think": "x"}]}
    c = codes(t, drifts={0: d})
    assert c["mt-retokenize"].positions == [(0, 25)] and c["mt-think-dropped"].turns == [(0, 1)]


def test_tool_output_dropped_or_cut():
    rolled = [{"turn": 1, "kind": "assistant", "rolled_back": {"completion_tokens": 4, "suffix_tokens": 12}}]
    f = codes(build(CLEAN[:13], events=rolled))["mt-tool-output-cut"]
    assert f.positions == [(0, 12)] and "would not fit" in f.detail
    cut = codes(build(CLEAN[:20], events=[{"turn": 1}]))["mt-tool-output-cut"]
    assert cut.positions == [(0, 19)] and "length limit" in cut.detail
    big = [{"turn": 1, "tool_outcomes": [{"name": "huge_tool", "outcome": "too-large"}]}, {"turn": 2}]
    assert "size cap" in codes(build(events=big))["mt-tool-output-cut"].detail
    assert "mt-tool-output-cut" not in codes(build(CLEAN[:13], events=[{"turn": 1}]))


def test_tool_call_that_did_not_parse():
    ev = [{"turn": 1, "parse_failed": "bad json"}, {"turn": 2}]
    f = codes(build(events=ev))["mt-tool-call-unparsed"]
    assert f.positions == [(0, 9)] and f.turns == [(0, 1)]


def test_model_text_that_looks_like_a_tool_result():
    t = build(id_26=11)                    # the model itself wrote <tool_response> in turn 2
    f = codes(t)["mt-fake-tool-result"]
    assert f.positions == [(0, 25)] and f.turns == [(0, 2)]
    masked = build(id_26=11, tm_25=0, tm_26=0, tm_27=0, tm_28=0)
    assert "mt-fake-tool-result" not in codes(masked)


@pytest.mark.parametrize("code", ["mt-tool-tokens-trained", "mt-eos-masked", "mt-header-trained", "mt-tool-output-cut",
                                  "mt-tool-call-unparsed", "mt-fake-tool-result", "mt-drift"])
def test_every_finding_names_turns_tokens_and_fix(code):
    traps = {
        "mt-tool-tokens-trained": dict(t=build(tm_17=1)),
        "mt-eos-masked": dict(t=build(tm_28=0)),
        "mt-header-trained": dict(t=build(role_24="assistant", tm_24=1)),
        "mt-tool-output-cut": dict(t=build(CLEAN[:20], events=[{"turn": 1}])),
        "mt-tool-call-unparsed": dict(t=build(events=[{"turn": 1, "parse_failed": "x"}])),
        "mt-fake-tool-result": dict(t=build(id_26=11)),
        "mt-drift": dict(t=build(), drifts={0: {"first_diff": 3, "differing": 1}}),
    }[code]
    f = codes(traps["t"], drifts=traps.get("drifts"))[code]
    assert f.positions and f.turns and f.fix and f.why and f.samples == [0]


def test_environment_tokens_in_the_loss():
    rows = [(i, "environment" if r == "tool" else r, tu, s, m) for i, r, tu, s, m in CLEAN]
    assert codes(build(rows)) == {}
    f = codes(build(rows, tm_19=1))["mt-tool-tokens-trained"]
    assert f.positions == [(0, 19)]
