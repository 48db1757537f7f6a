"""The hosted server: a bounded model cache, per-model load locks, one concurrency group for model work,
uploads refused before they are read, downloads that do not pile up, hostile files, hosted limits, and
running without a value model. Tiny models are built in temporary folders; nothing is downloaded."""

from __future__ import annotations

import gc
import io
import json
import os
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from inspector import ModelLoadError, load_models, run_rollout
from inspector import models as registry
from inspector.errors import InputError, LimitError
from inspector.sources.files import read_upload, read_upload_file
from inspector.limits import HOSTED, Limits
from inspector.models import DEFAULT_POLICY
from inspector.weights import resolve_source

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bytes_read() -> int:
    """Bytes this process has read through read() calls so far (/proc/self/io rchar)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


# ------------------------------------------------------------------------------------------- model cache

EMBED_HIDDEN = 256  # x the default vocabulary (49152), untied: about 25 M parameters, 100 MB, per model


@pytest.fixture(scope="module")
def sized_models(tmp_path_factory):
    """Six distinct causal LMs of about 100 MB each (with the default tokenizer) and one tiny classifier."""
    root = tmp_path_factory.mktemp("sized")
    tok = AutoTokenizer.from_pretrained(resolve_source(DEFAULT_POLICY))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=EMBED_HIDDEN, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    folders = []
    for i in range(6):
        torch.manual_seed(i)
        folder = root / f"causal-{i}"
        LlamaForCausalLM(config).save_pretrained(folder)
        tok.save_pretrained(folder)
        folders.append(str(folder))
    classifier = root / "classifier"
    small = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, num_labels=1,
                        pad_token_id=tok.pad_token_id)
    LlamaForSequenceClassification(small).save_pretrained(classifier)
    tok.save_pretrained(classifier)
    n_params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    return folders, str(classifier), n_params


def test_the_model_cache_keeps_at_most_its_count_and_frees_the_rest(sized_models, monkeypatch):
    folders, classifier, n_params = sized_models
    monkeypatch.setenv("INSPECTOR_MODEL_CACHE_MODELS", "2")
    registry.clear_cache()
    m = load_models(policy=folders[0], reward=classifier)
    del m
    gc.collect()
    base = rss()
    refs = []
    for folder in folders[1:]:
        m = load_models(policy=folder, reward=classifier)
        refs.append(weakref.ref(m.policy))
        del m
    gc.collect()
    grown = rss() - base
    contents = registry.cache_contents()
    assert len(contents) == 2
    assert [k[1] for k, _ in contents] == [folders[-1], classifier]  # the least recently used went first
    assert all(r() is None for r in refs[:-1])  # evicted models are gone, not held anywhere
    model_bytes = n_params * 4
    # five more models of 100 MB loaded: kept, they would add 500 MB; evicted and freed, about one model's worth
    assert grown < 1.5 * model_bytes, f"RSS grew by {grown / 1e6:.0f} MB for models of {model_bytes / 1e6:.0f} MB"
    registry.clear_cache()


def test_the_model_cache_keeps_within_its_parameter_budget(sized_models, monkeypatch):
    folders, classifier, n_params = sized_models
    monkeypatch.setenv("INSPECTOR_MODEL_CACHE_MODELS", "10")
    monkeypatch.setenv("INSPECTOR_MODEL_CACHE_PARAMS", str(int(2.5 * n_params)))
    registry.clear_cache()
    for folder in folders[:4]:
        load_models(policy=folder, reward=classifier)
    contents = registry.cache_contents()
    assert sum(n for _, n in contents) <= 2.5 * n_params
    assert [k[1] for k, _ in contents if k[0] == "causal"] == folders[2:4]
    registry.clear_cache()


def test_one_model_loading_does_not_hold_up_another():
    """Per-model locks: while model A loads, model B loads (a global lock would wait for A, which waits for B)."""
    b_loaded = threading.Event()
    seen = {}

    def load_a():
        seen["a saw b"] = b_loaded.wait(timeout=20)
        return torch.nn.Linear(1, 1), None

    def load_b():
        b_loaded.set()
        return torch.nn.Linear(1, 1), None

    thread = threading.Thread(target=registry._cached, args=(("test", "a"), load_a))
    thread.start()
    while ("test", "a") not in registry._load_locks:  # A holds its own lock now
        pass
    registry._cached(("test", "b"), load_b)
    thread.join(timeout=30)
    assert seen["a saw b"]

    calls = []

    def load_c():
        calls.append(1)
        b_loaded.wait(timeout=1)
        return torch.nn.Linear(1, 1), None

    threads = [threading.Thread(target=registry._cached, args=(("test", "c"), load_c)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(calls) == 1  # the same model, asked for at once by four callers, loads once
    registry.clear_cache()


# ---------------------------------------------------------------------------------- the app's handlers

HEAVY = {"run_callback", "import_callback", "rollout_api", "open_file_api", "load_callback", "grpo_rewards"}


def test_every_model_handler_shares_one_concurrency_group_and_asks_for_enough_gpu_time():
    from inspector.app import build_app, launch_kwargs
    from inspector.app.hosting import MODEL_GROUP

    demo = build_app()
    found = {}
    for fn in demo.fns.values():
        name = getattr(fn.fn, "__name__", None)
        if name in HEAVY:
            found[name] = fn
    assert set(found) == HEAVY
    for name, fn in found.items():
        assert fn.concurrency_id == MODEL_GROUP, name
        assert fn.concurrency_limit == 1, name
        assert fn.fn.gpu_duration >= Limits.from_env().max_time, name
    assert launch_kwargs()["max_file_size"] == Limits.from_env().max_upload_bytes


def test_the_gpu_duration_follows_the_time_limit(monkeypatch):
    from inspector.app.hosting import gpu

    monkeypatch.setenv("INSPECTOR_MAX_TIME", "500")
    assert gpu(lambda: None).gpu_duration >= 500


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_disk_stays_bounded_after_50_rollouts(greedy_rollout, tmp_path, monkeypatch):
    """The page's downloads (CSV, JSON record, JSONL, Parquet) of 50 rollouts by two sessions."""
    from inspector.app.hosting import downloads_root
    from inspector.app.rollouts import rollout_views

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    rollout_views(greedy_rollout, "", "session-a")
    one = folder_bytes(tmp_path)
    assert one > 1000
    for i in range(50):
        outputs = rollout_views(greedy_rollout, "", "session-a" if i % 2 else "session-b")
    root = str(downloads_root())
    files = [f for o in outputs for f in (o if isinstance(o, list) else [o]) if isinstance(f, str) and f.startswith(root)]
    assert len(files) == 4 and all(Path(f).is_file() for f in files)  # the last rollout's downloads are served
    assert folder_bytes(tmp_path) <= 2 * one + 4096  # one rollout's downloads per session, whatever the count
    assert len(list(downloads_root().iterdir())) == 2


def test_an_oversized_upload_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECTOR_MAX_UPLOAD_BYTES", "1000000")
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:  # sparse: 200 MB long, nothing written
        f.truncate(200_000_000)
    before = bytes_read()
    with pytest.raises(InputError, match="INSPECTOR_MAX_UPLOAD_BYTES"):
        read_upload_file(path)
    assert bytes_read() - before < 100_000


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


def test_the_launched_app_refuses_an_upload_over_the_size_limit(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "big.csv"
    path.write_bytes(b"prompt,completion\n" + b"a,b\n" * (Limits.from_env().max_upload_bytes // 4 + 10))
    with pytest.raises(Exception, match="(?i)file size|too large|exceed"):
        client.predict(handle_file(str(path)), api_name="/open_file")


# ------------------------------------------------------------------------------------------ hostile files

def _deep_parquet(depth: int) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t, v = pa.string(), "x"
    for _ in range(depth):  # structs: one Parquet schema level each (a list takes three)
        t, v = pa.struct([("a", t)]), {"a": v}
    buf = io.BytesIO()
    pq.write_table(pa.table({"prompt": pa.array([v], type=t), "completion": ["y"]}), buf)
    return buf.getvalue()


HOSTILE = [
    ("deep.json", b"[" * 200_000 + b"]" * 200_000, "nests arrays or objects more than 64 levels"),
    ("deep-object.json", b'{"a":' * 200_000 + b"1" + b"}" * 200_000, "more than 64 levels"),
    ("deep.jsonl", b'{"prompt": "a", "completion": "b"}\n' + b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
     "more than 64 levels deep \\(line 2\\)"),
    ("deep-cell.json", json.dumps([{"prompt": [{"role": "user", "content": [[["x"]]]}], "completion": "b"}]).encode(),
     "content must be text"),
    ("huge-number.json", b'[{"prompt": "a", "completion": "b", "reward": ' + b"9" * 100_000 + b"}]", "cannot be read"),
    ("deep.parquet", _deep_parquet(80), "column 'prompt' nests more than 64 levels"),
    ("deeper.parquet", _deep_parquet(200), "not a readable Parquet file"),
    ("deep.csv", b"prompt,completion\n" + b'"' + b"[" * 200_000 + b'",b\n', "not a readable CSV file"),
]


@pytest.mark.parametrize("name, data, message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_files_get_a_message_in_the_library(name, data, message):
    with pytest.raises(InputError, match=message):
        read_upload(data, name)


@pytest.mark.parametrize("name, data, message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_files_through_the_launched_app(client, tmp_path, name, data, message):
    from gradio_client import handle_file

    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(Exception, match=message) as info:
        client.predict(handle_file(str(path)), api_name="/open_file")
    assert "Something went wrong" not in str(info.value)
    good = tmp_path / "good.csv"
    good.write_text("prompt,completion\nHow was it?,Lovely!\n", encoding="utf-8")
    assert client.predict(handle_file(str(good)), api_name="/open_file")["prompts"] == ["How was it?"]


# ------------------------------------------------------------------------------------------ hosted limits

def test_hosted_deployments_get_the_hosted_limits_each_overridable(monkeypatch):
    monkeypatch.delenv("INSPECTOR_HOSTED", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert Limits.from_env() == Limits()
    monkeypatch.setenv("SPACE_ID", "someone/rollout-inspector")
    hosted = Limits.from_env()
    for name, value in HOSTED.items():
        assert getattr(hosted, name) == value
        monkeypatch.setenv(Limits.env_name(name), str(int(value) * 2))
        assert getattr(Limits.from_env(), name) == int(value) * 2
        monkeypatch.delenv(Limits.env_name(name))
    monkeypatch.delenv("SPACE_ID")
    monkeypatch.setenv("INSPECTOR_HOSTED", "1")
    assert Limits.from_env() == hosted
    assert hosted.max_new_tokens < Limits().max_new_tokens and hosted.max_total_tokens < Limits().max_total_tokens


def test_a_hosted_request_over_its_limits_is_refused_with_the_variable(models, monkeypatch):
    monkeypatch.setenv("INSPECTOR_HOSTED", "1")
    with pytest.raises(LimitError, match="INSPECTOR_MAX_NEW_TOKENS"):
        run_rollout(models, ["Hi"], max_new_tokens=HOSTED["max_new_tokens"] + 1)
    with pytest.raises(LimitError, match="INSPECTOR_MAX_TOTAL_TOKENS"):
        run_rollout(models, ["Hi"] * HOSTED["max_prompts"], samples_per_prompt=HOSTED["max_samples_per_prompt"],
                    max_new_tokens=HOSTED["max_new_tokens"])


# ------------------------------------------------------------------------------ policy with another vocabulary

@pytest.fixture(scope="module")
def other_vocab_policy(tmp_path_factory):
    """A tiny causal LM with a word-level vocabulary of its own (not SmolLM2's)."""
    from tokenizers import Tokenizer, models as tk_models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[EOS]"] + "hi hello say a word the cat dog is good bad . , !".split()
    tk = Tokenizer(tk_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")
    folder = tmp_path_factory.mktemp("other-vocab") / "policy"
    torch.manual_seed(2)
    config = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         pad_token_id=0, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_another_policy_vocabulary_is_named_with_the_ways_out(other_vocab_policy, models):
    problem = registry.value_vocabulary_problem(other_vocab_policy, "", "")
    assert problem and "another vocabulary" in problem and '"none"' in problem and "value model with" in problem
    assert registry.value_vocabulary_problem(other_vocab_policy, "", "none") is None
    assert registry.value_vocabulary_problem("", "", "") is None
    with pytest.raises(ModelLoadError, match='another vocabulary.*"none"'):
        load_models(policy=other_vocab_policy)


def test_no_value_model_gives_zero_values_noted_in_the_record(other_vocab_policy, models):
    from inspector.trainers.ppo import rollout_ppo_step

    m = load_models(policy=other_vocab_policy, value="none")
    assert m.value is None and m.names["value"] == "none"
    r = run_rollout(m, ["say hi", "hello"], max_new_tokens=5, seed=0)
    assert torch.equal(r.values, torch.zeros_like(r.logprobs))
    assert any("No value model" in note for note in r.notes)
    step = rollout_ppo_step(r)
    assert torch.isfinite(step.advantages).all() and step.advantages.abs().sum() > 0
    # the same with the default policy: values 0 where the reward model would give its own
    d = run_rollout(load_models(value="none"), ["Write a happy sentence."], max_new_tokens=6, seed=0)
    full = run_rollout(models, ["Write a happy sentence."], max_new_tokens=6, seed=0)
    assert torch.equal(d.values, torch.zeros_like(d.values)) and full.values.abs().sum() > 0
    assert torch.allclose(d.scores, full.scores, atol=1e-5)


def test_the_page_names_the_vocabulary_problem_and_offers_no_value_model(other_vocab_policy, models):
    from inspector.app.loading import load_callback, vocabulary_check

    note, button = vocabulary_check(other_vocab_policy, "", "")
    assert "another vocabulary" in note and button["visible"] is True
    note, button = vocabulary_check("", "", "")
    assert note == "" and button["visible"] is False
    summary = load_callback(other_vocab_policy, "", "none", "")
    assert "No value model" in summary


# ------------------------------------------------------------------------------------------ the Hub cache

def test_a_model_in_the_hub_cache_resolves_offline_and_an_absent_one_is_named(tmp_path):
    """scripts/make_hub_cache.py lays the converted default policy out as huggingface_hub does; read offline."""
    hf_home = tmp_path / "hf"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_hub_cache.py"), str(hf_home)], check=True,
                   capture_output=True, timeout=300)
    probe = ("import json, sys; from huggingface_hub import scan_cache_dir;"
             "from inspector.weights import hub_snapshot, DEFAULT_POLICY;"
             "s = scan_cache_dir() if sys.argv[1] == 'scan' else None;"
             "print(json.dumps([[r.repo_id for r in s.repos] if s else [], len(s.warnings) if s else 0,"
             " hub_snapshot(DEFAULT_POLICY)]))")
    env = dict(os.environ, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", probe, "scan"], env=env, capture_output=True, text=True, timeout=120)
    repos, warnings, snapshot = json.loads(out.stdout.strip().splitlines()[-1])
    assert repos == [DEFAULT_POLICY] and warnings == 0, out.stderr  # huggingface_hub reads it as its own
    assert (Path(snapshot) / "model.safetensors").is_symlink() and (Path(snapshot) / "config.json").is_file()
    env["HF_HOME"] = str(tmp_path / "empty")
    out = subprocess.run([sys.executable, "-c", probe, "no"], env=env, capture_output=True, text=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1])[2] is None, out.stderr


@pytest.mark.browser
def test_the_page_offers_no_value_model_when_the_policy_has_another_vocabulary(app_url, other_vocab_policy):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(app_url)
            page.wait_for_selector("#run", timeout=60_000)
            page.click("#models button, #models .label-wrap")
            box = page.get_by_label("Policy (Hub id or local folder)")
            box.fill(other_vocab_policy)
            box.press("Enter")  # submit: the models are chosen
            # and leave the box now: a blur caused by the click below sends its check (with the value box still
            # blank) at the same moment as the click's, and the two requests may reach the server in either order
            # (seen once in a full run: the button stayed after the value box had turned "none")
            box.blur()
            page.wait_for_selector("#vocab-note :text('another vocabulary')", timeout=60_000)
            assert page.locator("#no-value").is_visible()
            value_box = page.get_by_label("Value model")
            for _ in range(30):  # gradio ignores a click on an output of a running event (the check that the box's
                try:  # blur started): click until the click is taken, which the value box shows
                    page.click("#no-value", timeout=2_000)
                except PlaywrightTimeout:  # hidden: a click was taken
                    pass
                try:
                    expect(value_box).to_have_value("none", timeout=2_000)
                    break
                except AssertionError:
                    continue
            expect(value_box).to_have_value("none")
            # the button goes when the check run after the click has answered (the note may blank meanwhile, while
            # gradio shows its progress on it: that is no answer)
            expect(page.locator("#no-value")).to_be_hidden(timeout=60_000)
            assert "another" not in page.inner_text("#vocab-note")
        finally:
            browser.close()
