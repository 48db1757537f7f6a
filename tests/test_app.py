"""The app's callbacks and its public API, on real rollouts from the default models."""

from __future__ import annotations

import dataclasses
import json

import gradio as gr
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from inspector.app.api import rollout_api
from inspector.app.common import parse_prompts
from inspector.app.controls import RUN_INPUTS
from inspector.app.loading import load_callback
from inspector.app.rollouts import arrival_views, import_callback, run_callback, sample_views
from inspector.app.tabs.batch import compare_choices, compare_view
from inspector.app.tabs.ppo import ppo_validator, ppo_views
from inspector.app.validation import ppo_problems, run_problems, run_validator
from inspector.sources.examples import DEFAULT_EXAMPLE, EXAMPLES
from inspector.views import BATCH_COLUMNS, displayed
from inspector.record.format import rollout_from_dict, rollout_to_dict
from inspector.trainers.ppo import PPOConfig, rollout_ppo_step

pytestmark = pytest.mark.integration

DEFAULT_MODELS = ("", "", "", "")


def run(prompts, **overrides):
    settings = dict(use_chat=True, max_new_tokens=16, do_sample=True, temperature=0.7, top_k=0, top_p=1.0, seed=3,
                    samples=1, stop_choice="EOS token", stop_custom="", attention="trl")
    settings.update(overrides)
    return run_callback(*DEFAULT_MODELS, "\n".join(prompts), *settings.values())


@pytest.fixture(scope="module")
def outputs(models):
    return run(["Write a happy sentence.", "Name a fruit."])


def test_parse_prompts():
    assert parse_prompts(" a \n\n  b\n   \n") == ["a", "b"]
    assert parse_prompts("") == []


def test_run_callback_returns_every_view(outputs):
    (r, models_md, sample_update, status, diagnostics, seq_html, heatmap, entropy, stops, table, table_csv,
     record_json, gap_plot, gap_md, split, vr_html, values, compare_a, compare_b, compare) = outputs
    assert 'data-code="pad_equals_eos"' in diagnostics.replace("'", '"')
    assert isinstance(gap_plot, go.Figure) and "first-epoch ratio" in gap_md and "Effective generation settings" in gap_md
    assert r.batch_size == 2
    assert "pad token == EOS token" in models_md and "SmolLM2" in models_md
    assert [c[1] for c in sample_update["choices"]] == [0, 1]
    assert "2 samples" in status
    assert seq_html.count('data-sample="') >= 2
    assert isinstance(heatmap, go.Figure) and isinstance(entropy, go.Figure) and isinstance(values, go.Figure)
    stops, table = stops.data, table.data  # pandas Stylers: the page prints each float column at one precision
    assert isinstance(stops, pd.DataFrame) and len(stops) == 2
    assert isinstance(table, pd.DataFrame) and len(table) == 2
    shown = displayed(table, BATCH_COLUMNS).to_html()
    assert f"{table['score'][0]:.4f}" in shown and "-0.0000" not in shown
    assert pd.read_csv(table_csv).shape[0] == 2
    record_path, jsonl_path, parquet_path = record_json
    with open(record_path, encoding="utf-8") as fh:
        again = rollout_from_dict(json.load(fh))
    assert pd.read_json(jsonl_path, lines=True)["prompt"].tolist() == r.prompts
    assert pd.read_parquet(parquet_path)["reward"].tolist() == pytest.approx(r.scores.tolist(), abs=1e-5)
    assert torch.equal(again.sequences, r.sequences)
    assert torch.allclose(again.scores, r.scores)
    assert split and vr_html
    assert compare_a["value"] == 0 and compare_b["value"] == 1 and "data-compare='1'" in compare


def test_sample_views_follow_the_pick(outputs):
    r = outputs[0]
    split0, _, _ = sample_views(r, 0)
    split1, _, fig1 = sample_views(r, 1)
    assert split0 != split1
    assert sample_views(None, 0) == ("", "", None)
    assert sample_views(r, 99)[0] == split0  # out of range falls back to the first sample


def test_ppo_views_follow_the_settings(outputs):
    r = outputs[0]
    html_k1, metrics_k1 = ppo_views(r, 0, 0.05, "k1", 1.0, 0.95, False, False, 1.0)
    assert "data-row='advantages'" in html_k1 and "data-row='rewards'" in html_k1
    assert set(metrics_k1["metric"]) >= {"objective/kl", "objective/rlhf_reward", "val/num_eos_tokens"}
    shown = metrics_k1.set_index("metric")["value"]
    step = rollout_ppo_step(r, PPOConfig())
    for key in ("objective/kl", "objective/entropy", "objective/rlhf_reward", "val/num_eos_tokens"):
        assert float(shown[key]) == pytest.approx(step.metrics[key], abs=1e-6), key
    _, penalised = ppo_views(r, 1, 0.05, "k3", 0.9, 0.8, True, True, 5.0)
    expected = rollout_ppo_step(r, PPOConfig(kl_estimator="k3", gamma=0.9, lam=0.8, whiten_rewards=True,
                                             missing_eos_penalty=5.0))
    penalised = penalised.set_index("metric")["value"]
    assert float(penalised["objective/scores"]) == pytest.approx(expected.metrics["objective/scores"], abs=1e-6)
    assert penalised["config/missing_eos_penalty"] == "5.0"  # settings as typed, "none" when off
    with pytest.raises(gr.Error, match="kl_estimator"):
        ppo_views(r, 0, 0.05, "k9", 1.0, 0.95, False, False, 1.0)


def test_load_callback_summarises_the_models(models):
    md = load_callback(*DEFAULT_MODELS)
    assert "| policy |" in md and "| value |" in md and "the reward model itself" in md


@pytest.mark.parametrize(
    "prompts, overrides, message",
    [
        ([], {}, "no prompts"),
        (["hi"], {"stop_choice": "Custom token", "stop_custom": "hello there friend"}, "must be one token"),
        (["hi"], {"do_sample": True, "temperature": 0.0}, "temperature"),
    ],
)
def test_bad_input_shows_a_message_and_the_next_run_works(models, prompts, overrides, message):
    with pytest.raises(gr.Error, match=message):
        run(prompts, **overrides)
    assert run(["Say hi."], max_new_tokens=4)[0].batch_size == 1


def test_bad_model_id_keeps_the_loaded_models(models):
    with pytest.raises(gr.Error, match="Could not load the policy model"):
        run_callback("no-such-org/no-such-model", "", "", "", "hi", True, 4, True, 0.7, 0, 1.0, 0, 1,
                        "EOS token", "", "trl")
    assert run(["Say hi."], max_new_tokens=4)[0].batch_size == 1


def test_custom_stop_token_ends_generation(models):
    r = run(["Write three short sentences about dogs.", "Name two animals."], stop_choice="Custom token",
            stop_custom=".", max_new_tokens=40, do_sample=False)[0]
    period = models.tokenizer.convert_tokens_to_ids(".")
    assert r.stop_token_id == period
    for row in r.responses.tolist():  # the raw sequences end at the first '.', then only padding (TRL 0.14+)
        end = row.index(period)
        assert all(t == r.pad_token_id for t in row[end + 1:])
    assert r.generation_config["values"]["eos_token_id"] == period


def test_rollout_api_function(models):
    record = rollout_api(["Say hi."], max_new_tokens=6, seed=1)
    assert record["format"] == "rollout-inspector/2"
    assert len(record["scores"]) == 1 and len(record["responses"][0]) <= 6


def test_gradio_client_against_the_launched_app(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    record = client.predict(
        prompts=["Write a happy sentence.", "Say hi."], max_new_tokens=8, do_sample=False, seed=0,
        api_name="/rollout",
    )
    assert record["format"] == "rollout-inspector/2"
    assert len(record["scores"]) == 2
    assert record["context_length"] == len(record["queries"][0])
    r = rollout_from_dict(record)
    assert torch.equal(r.responses, r.sequences[:, r.context_length:])
    with pytest.raises(Exception, match="no prompts"):
        client.predict(prompts=[], api_name="/rollout")


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompts": []}, "no prompts"),
        ({"prompts": ["   ", "\t"]}, "empty"),
        ({"prompts": ["x" * 100_000]}, "characters long"),
        ({"prompts": ["hi"], "temperature": 0.0}, "temperature"),
        ({"prompts": ["hi"], "top_p": 0.0}, "top_p"),
        ({"prompts": ["hi"], "max_new_tokens": -5}, "max_new_tokens"),
        ({"prompts": ["hi"], "max_new_tokens": 10**9}, "INSPECTOR_MAX_NEW_TOKENS"),
        ({"prompts": ["hi"], "samples_per_prompt": 10**6}, "INSPECTOR_MAX_SAMPLES_PER_PROMPT"),
        ({"prompts": ["hi"] * 500}, "INSPECTOR_MAX_PROMPTS"),
        ({"prompts": ["hi"], "top_k": -3}, "top_k"),
        ({"prompts": ["hi"], "seed": -1}, "seed"),
        ({"prompts": ["hi"], "stop_token": "two tokens here"}, "one token"),
        ({"prompts": ["hi"], "attention": "everything"}, "attention"),
        ({"prompts": ["hi"], "policy": "no-such-org/no-such-model"}, "Could not load"),
    ],
)
def test_bad_input_through_the_api(client, kwargs, message):
    with pytest.raises(Exception, match=message):
        client.predict(api_name="/rollout", **kwargs)
    record = client.predict(prompts=["Say hi."], max_new_tokens=3, api_name="/rollout")
    assert len(record["scores"]) == 1


def test_odd_text_is_handled(client):
    prompts = ["مرحبا، كيف حالك؟", "Emoji 🎉🔥 and control \x07 chars"]
    record = client.predict(prompts=prompts, max_new_tokens=4, api_name="/rollout")
    assert record["prompts"] == prompts


def test_compare_two_samples(outputs):
    r = outputs[0]
    html = compare_view(r, 0, 1)
    assert "data-compare='0'" in html and "data-compare='1'" in html
    assert f"{float(r.scores[1]):+.4f}" in html
    assert compare_view(r, 0, 7) == ""
    # a picker not yet set (its change event ran before the other picker's value arrived) keeps what is shown
    assert compare_view(r, 0, None) == compare_view(None, 0, 1) == gr.update()
    left, right, both = compare_choices(r)
    assert left["value"] == 0 and right["value"] == 1 and both == html


def test_batch_table_holds_the_rollouts_kl_gap_and_scores(models):
    out = run(["Write a happy sentence.", "Name a fruit."], top_k=20, max_new_tokens=24)
    r, table = out[0], out[9].data
    valid = ~r.padding_mask
    kl = torch.where(valid, r.logprobs - r.ref_logprobs, 0).sum(1)  # TRL's k1 KL, summed: sampling-time logprobs
    gap = torch.where(valid, (r.logprobs - r.new_logprobs).abs(), 0).max(1).values
    assert gap.max() > 0.05  # top_k=20: the sampled-from distribution is not the recompute's
    assert table["KL"].tolist() == pytest.approx(kl.tolist(), abs=1e-4)
    assert table["max logprob gap"].tolist() == pytest.approx(gap.tolist(), abs=1e-4)
    assert table["score"].tolist() == pytest.approx(r.scores.tolist(), abs=1e-4)


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("rollout.json", __import__("pickle").dumps({"format": "x"}), "pickle"),
        ("model.csv", b"PK\x03\x04 a zip in disguise", "zip"),
        ("broken.jsonl", b'{"prompt": "a", "completion": "b"}\n{broken', "line 2"),
        ("empty.csv", b"", "empty"),
        ("odd.csv", b"question,answer\na,b\n", "prompt column"),
    ],
)
def test_bad_uploads_through_the_api(client, tmp_path, name, data, message):
    from gradio_client import handle_file

    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(Exception, match=message):
        client.predict(handle_file(str(path)), api_name="/open_file")
    good = tmp_path / "good.csv"
    good.write_text("prompt,completion,reward\nHow was it?,Lovely!,1.0\n", encoding="utf-8")
    record = client.predict(handle_file(str(good)), api_name="/open_file")
    assert record["prompts"] == ["How was it?"] and len(record["scores"]) == 1


def test_oversized_upload_through_the_api(client, tmp_path, monkeypatch):
    from gradio_client import handle_file

    monkeypatch.setenv("INSPECTOR_MAX_UPLOAD_BYTES", "64")  # the app runs in this process: read at each request
    path = tmp_path / "big.csv"
    path.write_text("prompt,completion\n" + "a,b\n" * 100, encoding="utf-8")
    with pytest.raises(Exception, match="INSPECTOR_MAX_UPLOAD_BYTES"):
        client.predict(handle_file(str(path)), api_name="/open_file")


@pytest.mark.parametrize(
    "field, overrides, message",
    [
        ("prompts", {"prompts_text": " \n "}, "no prompts"),
        ("temperature", {"temperature": 0.0}, "temperature must be a number above 0"),
        ("top_p", {"top_p": 0.0}, "top_p must be a number above 0 and at most 1"),
        ("top_k", {"top_k": -1}, "top_k must be a whole number at least 0"),
        ("seed", {"seed": None}, "seed is empty"),
        ("max_new_tokens", {"max_new_tokens": 0}, "max_new_tokens must be a whole number at least 1"),
        ("stop_custom", {"stop_choice": "Custom token", "stop_custom": ""}, "custom stop token"),
    ],
)
def test_a_bad_generation_setting_is_refused_on_its_field(field, overrides, message):
    values = dict(prompts_text="hi", max_new_tokens=8, do_sample=True, temperature=0.7, top_k=0, top_p=1.0, seed=0,
                  stop_choice="EOS token", stop_custom="")
    assert run_problems(**values) == {}
    problems = run_problems(**(values | overrides))
    assert list(problems) == [field] and message in problems[field]
    # the validator marks that field alone, in the order of the page's inputs
    marks = run_validator("", "", "", "", values["prompts_text"], True, values["max_new_tokens"], True,
                             values["temperature"], values["top_k"], values["top_p"], values["seed"], 1,
                             values["stop_choice"], values["stop_custom"], "trl")
    assert all(m["is_valid"] for m in marks)
    args = dict(zip(RUN_INPUTS, ["", "", "", "", values["prompts_text"], True, values["max_new_tokens"], True,
                                    values["temperature"], values["top_k"], values["top_p"], values["seed"], 1,
                                    values["stop_choice"], values["stop_custom"], "trl", False]))
    args.update({("prompts" if k == "prompts_text" else k): v for k, v in overrides.items()})
    marks = run_validator(*args.values())
    assert [n for n, m in zip(RUN_INPUTS, marks) if not m["is_valid"]] == [field]
    # greedy decoding does not read temperature, top_p or top_k
    if field in ("temperature", "top_p", "top_k"):
        assert run_problems(**(values | overrides | {"do_sample": False})) == {}


@pytest.mark.parametrize(
    "field, overrides, message",
    [
        ("kl_coef", {"kl_coef": -1}, "kl_coef must be a number at least 0 (got -1)"),
        ("kl_coef", {"kl_coef": None}, "kl_coef is empty: type a number at least 0"),
        ("gamma", {"gamma": 1.5}, "gamma must be a number from 0 to 1"),
        ("lam", {"lam": -0.1}, "lam must be a number from 0 to 1"),
        ("missing_eos_penalty", {"penalty_on": True, "penalty": -2}, "missing_eos_penalty must be a number at least 0"),
    ],
)
def test_a_bad_ppo_setting_is_refused_by_name(outputs, field, overrides, message):
    values = dict(kl_coef=0.05, gamma=1.0, lam=0.95, penalty_on=False, penalty=-2)
    assert ppo_problems(**values) == {}  # the penalty is not read while it is off
    problems = ppo_problems(**(values | overrides))
    assert list(problems) == [field] and message in problems[field]
    args = (outputs[0], 0, values["kl_coef"], "k1", values["gamma"], values["lam"], False, values["penalty_on"],
            values["penalty"])
    names = ["rollout", "sample", "kl_coef", "kl_estimator", "gamma", "lam", "whiten_rewards", "penalty_on",
             "missing_eos_penalty"]
    bad = dict(zip(names, args)) | {("missing_eos_penalty" if k == "penalty" else k): v for k, v in overrides.items()}
    marks = ppo_validator(*bad.values())
    assert [n for n, m in zip(names, marks) if not m["is_valid"]] == [field]
    with pytest.raises(gr.Error, match=field):  # called directly, the function refuses by name too
        ppo_views(*bad.values())


def test_the_ppo_panel_says_why_kl_is_zero(outputs):
    html, _ = ppo_views(outputs[0], 0, 0.05, "k1", 1.0, 0.95, False, False, 1.0)
    assert "KL is 0 by construction" in html and "Reference model" in html
    other = dataclasses.replace(outputs[0], model_names={**outputs[0].model_names, "reference": "some/other-model"})
    html, _ = ppo_views(other, 0, 0.05, "k1", 1.0, 0.95, False, False, 1.0)
    assert "KL is 0 by construction" not in html


def test_arrival_shows_the_saved_example_a_link_names():
    views = arrival_views({"example": "short-answers-pad-eos", "sample": "2"})
    r, status, sample = views[0], views[3], views[2]
    assert r.prompts == EXAMPLES["Short answers (pad == EOS)"] and sample["value"] == 2
    assert "Saved example" in status and "short-answers-pad-eos.json" in status and "made 20" in status
    prompts, example_set, note = views[-3:]
    assert prompts.splitlines() == r.prompts and example_set == "Short answers (pad == EOS)" and not note["visible"]
    default = arrival_views({})
    assert default[0].prompts == EXAMPLES[DEFAULT_EXAMPLE] and default[2]["value"] == 0
    odd = arrival_views({"example": "nope", "sample": "99"})
    assert odd[0].prompts == EXAMPLES[DEFAULT_EXAMPLE] and odd[2]["value"] == 0
    assert "nope" in odd[-1]["value"] and "99" in odd[-1]["value"] and odd[-1]["visible"]


def test_a_rollout_from_a_file_says_where_it_came_from(outputs, tmp_path):
    r = outputs[0]
    record = tmp_path / "shared-run.json"
    record.write_text(json.dumps(rollout_to_dict(r)), encoding="utf-8")
    views = import_callback(str(record), *DEFAULT_MODELS, True, "EOS token", "", "trl")
    assert "`shared-run.json`" in views[3] and "our rollout record" in views[3] and "made 20" in views[3]
    table = tmp_path / "rows.jsonl"
    table.write_text('{"input": "Hi", "output": "Hello!", "score": 1.0}\n', encoding="utf-8")
    views = import_callback(str(table), *DEFAULT_MODELS, True, "EOS token", "", "trl")
    assert "`rows.jsonl`" in views[3] and "verl rollout dump" in views[3] and "1 sample × " in views[3]
