"""The app's callbacks and its public API, on real rollouts from the default models."""

from __future__ import annotations

import json

import gradio as gr
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from inspector import ui
from inspector.export import rollout_from_dict
from inspector.ppo import PPOConfig, rollout_ppo_step

pytestmark = pytest.mark.integration

DEFAULT_MODELS = ("", "", "", "")


def run(prompts, **overrides):
    settings = dict(use_chat=True, max_new_tokens=16, do_sample=True, temperature=0.7, top_k=0, top_p=1.0, seed=3,
                    samples=1, stop_choice="EOS token", stop_custom="", attention="trl")
    settings.update(overrides)
    return ui.run_callback(*DEFAULT_MODELS, "\n".join(prompts), *settings.values())


@pytest.fixture(scope="module")
def outputs(models):
    return run(["Write a happy sentence.", "Name a fruit."])


def test_parse_prompts():
    assert ui.parse_prompts(" a \n\n  b\n   \n") == ["a", "b"]
    assert ui.parse_prompts("") == []


def test_run_callback_returns_every_view(outputs):
    (r, models_md, sample_update, status, diagnostics, seq_html, heatmap, entropy, stops, table, table_csv,
     record_json, gap_plot, gap_md, split, vr_html, values) = outputs
    assert 'data-code="pad_equals_eos"' in diagnostics.replace("'", '"')
    assert isinstance(gap_plot, go.Figure) and "first-epoch ratio" in gap_md and "Effective generation settings" in gap_md
    assert r.batch_size == 2
    assert "pad token == EOS token" in models_md and "SmolLM2" in models_md
    assert [c[1] for c in sample_update["choices"]] == [0, 1]
    assert "2 samples" in status
    assert seq_html.count('data-sample="') >= 2
    assert isinstance(heatmap, go.Figure) and isinstance(entropy, go.Figure) and isinstance(values, go.Figure)
    assert isinstance(stops, pd.DataFrame) and len(stops) == 2
    assert isinstance(table, pd.DataFrame) and len(table) == 2
    assert pd.read_csv(table_csv).shape[0] == 2
    record_path, jsonl_path, parquet_path = record_json
    with open(record_path, encoding="utf-8") as fh:
        again = rollout_from_dict(json.load(fh))
    assert pd.read_json(jsonl_path, lines=True)["prompt"].tolist() == r.prompts
    assert pd.read_parquet(parquet_path)["reward"].tolist() == pytest.approx(r.scores.tolist(), abs=1e-5)
    assert torch.equal(again.sequences, r.sequences)
    assert torch.allclose(again.scores, r.scores)
    assert split and vr_html


def test_sample_views_follow_the_pick(outputs):
    r = outputs[0]
    split0, _, _ = ui.sample_views(r, 0)
    split1, _, fig1 = ui.sample_views(r, 1)
    assert split0 != split1
    assert ui.sample_views(None, 0) == ("", "", None)
    assert ui.sample_views(r, 99)[0] == split0  # out of range falls back to the first sample


def test_ppo_views_follow_the_settings(outputs):
    r = outputs[0]
    html_k1, metrics_k1 = ui.ppo_views(r, 0, 0.05, "k1", 1.0, 0.95, False, False, 1.0)
    assert "data-row='advantages'" in html_k1 and "data-row='rewards'" in html_k1
    assert set(metrics_k1["metric"]) >= {"objective/kl", "objective/rlhf_reward", "val/num_eos_tokens"}
    shown = metrics_k1.set_index("metric")["value"]
    step = rollout_ppo_step(r, PPOConfig())
    for key in ("objective/kl", "objective/entropy", "objective/rlhf_reward", "val/num_eos_tokens"):
        assert float(shown[key]) == pytest.approx(step.metrics[key], abs=1e-6), key
    _, penalised = ui.ppo_views(r, 1, 0.05, "k3", 0.9, 0.8, True, True, 5.0)
    expected = rollout_ppo_step(r, PPOConfig(kl_estimator="k3", gamma=0.9, lam=0.8, whiten_rewards=True,
                                             missing_eos_penalty=5.0))
    penalised = penalised.set_index("metric")["value"]
    assert float(penalised["objective/scores"]) == pytest.approx(expected.metrics["objective/scores"], abs=1e-6)
    assert penalised["config/missing_eos_penalty"] == 5.0
    with pytest.raises(gr.Error, match="kl_estimator"):
        ui.ppo_views(r, 0, 0.05, "k9", 1.0, 0.95, False, False, 1.0)


def test_load_callback_summarises_the_models(models):
    md = ui.load_callback(*DEFAULT_MODELS)
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
        ui.run_callback("no-such-org/no-such-model", "", "", "", "hi", True, 4, True, 0.7, 0, 1.0, 0, 1,
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
    record = ui.rollout_api(["Say hi."], max_new_tokens=6, seed=1)
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
    html = ui.compare_view(r, 0, 1)
    assert "data-compare='0'" in html and "data-compare='1'" in html
    assert f"{float(r.scores[1]):+.4f}" in html
    assert ui.compare_view(r, 0, 7) == "" and ui.compare_view(None, 0, 1) == ""
    left, right = ui.compare_choices(r)
    assert left["value"] == 0 and right["value"] == 1


def test_batch_table_holds_the_rollouts_kl_gap_and_scores(models):
    out = run(["Write a happy sentence.", "Name a fruit."], top_k=20, max_new_tokens=24)
    r, table = out[0], out[9]
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
