"""Multi-turn rollouts on the default model: the library call, the CLI and the API function (small)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scripted_run(models):
    from inspector import run_multiturn

    return run_multiturn(models, ["What is 3*4?"], mode="scripted", max_turns=1, max_completion_length=48,
                         num_generations=2, seed=0, scripted_replies=["Say it again."])


def test_scripted_rollout_on_the_default_model(scripted_run, models):
    ro = scripted_run
    assert len(ro) == 2 and len(ro.advantages) == 2 and ro.grpo["loss"] == ro.grpo["loss"]
    for t in ro.trajectories:
        assert len(t.completion_ids) <= 48
        assert all(s == (r == "assistant") for s, r in zip(t.sampled[t.prompt_length:], t.role[t.prompt_length:]))
        assert all(lp is not None for lp, s in zip(t.logprobs, t.sampled) if s)
        w = ro.grpo["token_weights"][t.sample_index]
        assert all(x == 0 for x, m in zip(w, t.loss_mask) if not m)
    assert len(ro.drift) == 2 and all("first_diff" in d for d in ro.drift)
    json.dumps(ro.to_dict())
    assert models.tokenizer.chat_template is not None and "tool_call" not in models.tokenizer.chat_template


def test_tools_mode_with_bounded_tools_on_the_default_model(models):
    from inspector import run_multiturn

    ro = run_multiturn(models, ["Use the calculator: 3*4"], mode="tools", tools=["calculator", "looping_tool"],
                       max_turns=1, max_completion_length=32, num_generations=2, seed=1, tool_time_limit=1.0)
    assert ro.settings["chat_template"] == "qwen2_5" and ro.notes
    assert {s["function"]["name"] for s in ro.settings["tool_schemas"]} == {"calculator", "looping_tool"}
    assert "tool_call" not in models.tokenizer.chat_template


def test_cli_multi_turn(capsys, tmp_path):
    from inspector.__main__ import main

    out = tmp_path / "mt.json"
    rc = main(["--multi-turn", "scripted", "--max-new-tokens", "32", "--num-generations", "2", "--max-turns", "1",
               "--json", str(out), "What is 2+2?"])
    text = capsys.readouterr().out
    assert rc == 0 and "multi-turn rollout: mode scripted" in text and "findings:" in text
    assert "what the reward functions receive" in text
    assert json.loads(out.read_text())["settings"]["mode"] == "scripted"


def test_api_function_and_its_limits():
    from inspector.app.api import multiturn_api

    rec = multiturn_api(["What is 2+2?"], mode="scripted", max_turns=1, max_completion_length=24, num_generations=2)
    assert rec["settings"]["mode"] == "scripted" and len(rec["trajectories"]) == 2
    with pytest.raises(Exception, match="at most"):
        multiturn_api(["a"], num_generations=64)


def test_gradio_client_multiturn_endpoint(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    rec = client.predict(prompts=["What is 2+2?"], mode="tools", tools=["calculator", "failing_tool"], max_turns=1,
                         max_completion_length=16, num_generations=2, seed=0, api_name="/multiturn")
    assert rec["settings"]["mode"] == "tools" and len(rec["trajectories"]) == 2
    assert rec["settings"]["chat_template"] == "qwen2_5"
    with pytest.raises(Exception, match="at most"):
        client.predict(prompts=["a"], max_turns=99, api_name="/multiturn")
