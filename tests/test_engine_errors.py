"""The engine client against servers that answer badly: real HTTP servers on 127.0.0.1 (no mock of anything),
each failure an EngineError that names the URL and what to do. And the hosted allow-list of engine URLs."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from inspector.sources.engine import EngineError, normalize_url, probe, sample
from inspector.sources.generation import SamplingSettings, encode_prompts
from inspector.weights import converted_default_policy

SETTINGS = SamplingSettings(max_new_tokens=4, temperature=0.7, seed=0)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(converted_default_policy())


class Canned(BaseHTTPRequestHandler):
    """Answers each path from `self.server.routes`: path -> (status, body) or a callable(request) -> (status, body)."""

    def _answer(self, payload):
        route = self.server.routes.get(self.path)
        if route is None:
            status, body = 404, {"detail": "Not Found"}
        else:
            status, body = route(payload) if callable(route) else route
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except BrokenPipeError:  # the client gave up first (the timeout test)
            pass

    def do_GET(self):  # noqa: N802 - the stdlib's name
        self._answer(None)

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        self._answer(json.loads(self.rfile.read(length) or b"{}"))

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """Start a canned server with the given routes; every one started is shut down after the test."""
    started = []

    def start(routes: dict) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Canned)
        server.routes = routes
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        started.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


MODELS = (200, {"object": "list", "data": [{"id": "policy", "max_model_len": 2048}]})


def good_choice(tokenizer, index: int) -> dict:
    ids = tokenizer("Hello there", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {
        "index": index, "text": tokenizer.decode(ids), "finish_reason": "stop", "token_ids": ids,
        "logprobs": {"tokens": [f"token_id:{i}" for i in ids], "token_logprobs": [-0.5] * len(ids),
                     "top_logprobs": [{f"token_id:{i}": -0.5, "token_id:7": -1.0} for i in ids]},
    }


def tokenize_route(tokenizer, shift: int = 0):
    return lambda body: (200, {"tokens": [i + shift for i in tokenizer(body["prompt"], add_special_tokens=False)["input_ids"]],
                               "count": 0, "max_model_len": 2048})


def run_sample(url, tokenizer, n=2, timeout=5.0):
    enc = encode_prompts(tokenizer, ["Say hi."] * n)
    prompt_ids = [enc.queries[0][enc.attention_mask[0].bool()].tolist()]
    return sample(url, tokenizer, enc.queries, prompt_ids, SETTINGS, n, top_logprobs=2, timeout=timeout)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: nothing listens there


def test_a_good_canned_answer_is_laid_out_as_trl_does(serve, tokenizer):
    url = serve({"/v1/models": MODELS, "/tokenize": tokenize_route(tokenizer),
                 "/v1/completions": lambda body: (200, {"choices": [good_choice(tokenizer, i) for i in range(body["n"])]})})
    result, info = run_sample(url, tokenizer)
    assert info.served_model == "policy" and info.url == url
    ids = tokenizer("Hello there", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    gen = result.generation
    assert gen.sequences[0, -len(ids):].tolist() == ids
    assert gen.logprobs.tolist() == [[-0.5] * len(ids)] * 2
    assert gen.topk_ids[0, 0].tolist() == [ids[0], 7] and gen.topk_logprobs[0, 0].tolist() == [-0.5, -1.0]
    assert gen.ranks[0].tolist() == [0] * len(ids)


@pytest.mark.parametrize("case, routes, expected", [
    ("404 on models", {}, "HTTP 404"),
    ("500 on completions", {"/v1/completions": (500, {"error": "engine dead"})}, "HTTP 500"),
    ("400 on completions", {"/v1/completions": (400, {"error": "bad request: logprobs > max_logprobs"})}, "HTTP 400"),
    ("not JSON", {"/v1/completions": (200, b"<html>proxy</html>")}, "not JSON"),
    ("no choices", {"/v1/completions": (200, {"id": "x"})}, "without `choices`"),
    ("fewer choices", {"/v1/completions": "fewer"}, "returned 1 completions"),
    ("no token ids", {"/v1/completions": "no_ids"}, "no token ids"),
    ("no logprobs", {"/v1/completions": "no_logprobs"}, "no logprobs"),
    ("tokens by text", {"/v1/completions": "text_tokens"}, "names tokens by text"),
    ("another vocabulary", {"/tokenize": "shifted"}, "tokenizer is not the policy's"),
    ("ids outside the vocabulary", {"/v1/completions": "huge_ids"}, "outside the policy's vocabulary"),
])
def test_each_bad_answer_is_an_engine_error_naming_the_url(serve, tokenizer, case, routes, expected):
    def choices(body, edit):
        out = [good_choice(tokenizer, i) for i in range(body["n"])]
        for c in out:
            edit(c)
        return out

    edits = {
        "fewer": lambda body: (200, {"choices": choices(body, lambda c: None)[:1]}),
        "no_ids": lambda body: (200, {"choices": choices(body, lambda c: c.pop("token_ids"))}),
        "no_logprobs": lambda body: (200, {"choices": choices(body, lambda c: c.update(logprobs=None))}),
        "text_tokens": lambda body: (200, {"choices": choices(body, lambda c: c["logprobs"].update(
            tokens=["Hello"] * len(c["token_ids"])))}),
        "huge_ids": lambda body: (200, {"choices": choices(body, lambda c: (
            c.update(token_ids=[10**6] * len(c["token_ids"])),
            c["logprobs"].update(tokens=[f"token_id:{10**6}"] * len(c["token_ids"]))))}),
        "shifted": tokenize_route(tokenizer, shift=1),
    }
    base = {"/v1/models": MODELS, "/tokenize": tokenize_route(tokenizer),
            "/v1/completions": lambda body: (200, {"choices": [good_choice(tokenizer, i) for i in range(body["n"])]})}
    if case != "404 on models":
        base.update({path: edits.get(route, route) if isinstance(route, str) else route for path, route in routes.items()})
    else:
        base = {}
    url = serve(base)
    with pytest.raises(EngineError) as err:
        run_sample(url, tokenizer)
    message = str(err.value)
    assert url in message and expected in message, message


def test_unreachable_server(tokenizer):
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(EngineError, match="unreachable.*start the server") as err:
        probe(url, tokenizer)
    assert url in str(err.value)


def test_timeout_is_bounded_and_named(serve, tokenizer):
    def slow(body):
        time.sleep(3)
        return 200, {"choices": []}

    url = serve({"/v1/models": MODELS, "/tokenize": tokenize_route(tokenizer), "/v1/completions": slow})
    started = time.monotonic()
    with pytest.raises(EngineError, match=r"did not answer within 1 s") as err:
        run_sample(url, tokenizer, timeout=1.0)
    assert time.monotonic() - started < 2.9
    assert url in str(err.value)


def test_a_server_without_tokenize_is_checked_on_its_text(serve, tokenizer):
    def wrong_text(body):
        out = [good_choice(tokenizer, i) for i in range(body["n"])]
        out[1]["text"] = "Bonjour"
        return 200, {"choices": out}

    url = serve({"/v1/models": MODELS, "/v1/completions": wrong_text})
    with pytest.raises(EngineError, match="another vocabulary"):
        run_sample(url, tokenizer)
    url = serve({"/v1/models": MODELS,
                 "/v1/completions": lambda body: (200, {"choices": [good_choice(tokenizer, i) for i in range(body["n"])]})})
    result, info = run_sample(url, tokenizer)
    assert info.vocabulary_check.startswith("no /tokenize") and len(result.finish_reasons) == 2


@pytest.mark.parametrize("url", ["", "127.0.0.1:8000", "ftp://host:1", "http://user:pw@host:1", "http://h:1/?x=1"])
def test_malformed_urls_are_refused(url):
    with pytest.raises(EngineError):
        normalize_url(url)


def test_urls_are_normalised(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("INSPECTOR_HOSTED", raising=False)
    assert normalize_url(" http://127.0.0.1:8000/v1/ ") == "http://127.0.0.1:8000"
    assert normalize_url("https://Example.org/serving/v1") == "https://example.org/serving"


@pytest.mark.parametrize("hosted_var", [("SPACE_ID", "someone/inspector"), ("INSPECTOR_HOSTED", "1")])
def test_hosted_deployment_takes_engine_urls_only_from_its_allow_list(monkeypatch, hosted_var):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("INSPECTOR_HOSTED", raising=False)
    monkeypatch.setenv(*hosted_var)
    monkeypatch.delenv("INSPECTOR_ENGINE_URLS", raising=False)
    with pytest.raises(EngineError, match="INSPECTOR_ENGINE_URLS.*listed: none"):
        normalize_url("http://127.0.0.1:8000")
    monkeypatch.setenv("INSPECTOR_ENGINE_URLS", "http://10.0.0.5:8000/v1, https://vllm.example.org")
    assert normalize_url("http://10.0.0.5:8000") == "http://10.0.0.5:8000"
    assert normalize_url("https://vllm.example.org/") == "https://vllm.example.org"
    for other in ("http://169.254.169.254", "http://10.0.0.5:8001", "http://127.0.0.1:8000"):
        with pytest.raises(EngineError, match="refused"):
            normalize_url(other)


def test_hosted_refusal_happens_before_any_request(monkeypatch, serve, tokenizer):
    hits = []
    url = serve({"/v1/models": lambda body: (hits.append(1), MODELS)[1]})
    monkeypatch.setenv("INSPECTOR_HOSTED", "1")
    monkeypatch.delenv("INSPECTOR_ENGINE_URLS", raising=False)
    with pytest.raises(EngineError, match="refused"):
        probe(url, tokenizer)
    assert hits == []


def test_layout_pads_as_trl(serve, tokenizer):
    short = [5, tokenizer.eos_token_id]
    long = [5, 6, 7, 8]

    def two_lengths(body):
        out = []
        for i, ids in enumerate([short, long]):
            out.append({"index": i, "text": tokenizer.decode(ids), "finish_reason": "stop" if i == 0 else "length",
                        "token_ids": ids, "logprobs": {"tokens": [f"token_id:{t}" for t in ids],
                                                       "token_logprobs": [-0.25 * (j + 1) for j in range(len(ids))],
                                                       "top_logprobs": [{f"token_id:{t}": -0.1} for t in ids]}})
        return 200, {"choices": out}

    url = serve({"/v1/models": MODELS, "/tokenize": tokenize_route(tokenizer), "/v1/completions": two_lengths})
    enc = encode_prompts(tokenizer, ["Hi", "Hi"])
    result, _ = sample(url, tokenizer, enc.queries, [enc.queries[0][enc.attention_mask[0].bool()].tolist()], SETTINGS, 2,
                       top_logprobs=1)
    gen, pad, Q = result.generation, tokenizer.pad_token_id, enc.queries.shape[1]
    assert torch.equal(gen.sequences[:, :Q], enc.queries)  # queries left-padded with the pad id, as they were sent
    assert gen.sequences[0, Q:].tolist() == short + [pad, pad]  # completions right-padded with the pad id
    assert gen.sequences[1, Q:].tolist() == long
    assert gen.logprobs[0].tolist() == [-0.25, -0.5, 0.0, 0.0]  # TRL pads sampling logprobs with 0.0
    assert result.finish_reasons == ["stop", "length"] and result.completion_lengths == [2, 4]


def test_null_and_nan_logprobs_are_nan_and_get_ratio_one_as_in_trl(serve, tokenizer):
    """A server that could not score two sampled tokens (a JSON null and a NaN, as vLLM writes them): no raw
    TypeError; the tokens are NaN in the sampler logprobs (TRL maps vLLM's None to NaN), the record names
    them, and TRL's `nan_to_num` gives them a zero gap, so the sequence-level correction neither drops the
    completion nor moves its ratio."""
    from inspector.sources.engine import unreported_note
    from inspector.trainers.sampler import sampler_correction

    ids = [5, 6, 7, tokenizer.eos_token_id]

    def with_holes(body):
        out = []
        for i in range(body["n"]):
            lps = [-0.5, None, -0.25, -0.1] if i == 0 else [-0.5, -0.5, float("nan"), -0.1]
            out.append({"index": i, "text": tokenizer.decode(ids), "finish_reason": "stop", "token_ids": ids,
                        "logprobs": {"tokens": [f"token_id:{t}" for t in ids], "token_logprobs": lps,
                                     "top_logprobs": [{f"token_id:{t}": lp, "token_id:9": None} for t, lp in zip(ids, lps)]}})
        return 200, {"choices": out}

    url = serve({"/v1/models": MODELS, "/tokenize": tokenize_route(tokenizer), "/v1/completions": with_holes})
    result, _ = run_sample(url, tokenizer)
    lp = result.generation.logprobs
    assert torch.isnan(lp[0, 1]) and torch.isnan(lp[1, 2]) and torch.isfinite(lp[0, [0, 2, 3]]).all()
    assert result.unreported_logprobs == [{"sample": 0, "position": 1, "token_id": 6},
                                          {"sample": 1, "position": 2, "token_id": 7}]
    assert result.generation.ranks[0, 1] == -1                # no rank without the token's logprob
    note = unreported_note(result.unreported_logprobs)
    assert "sample 0 position 1 (token 6)" in note and "sample 1 position 2 (token 7)" in note
    trainer = torch.nan_to_num(lp, nan=-0.3)                  # the trainer scores every token
    mask = torch.ones_like(lp)
    c = sampler_correction(trainer, lp, mask, "sequence_mask", None, 3.0)
    assert not c.dropped.any()
    assert torch.allclose(c.ratio, torch.ones_like(c.ratio))  # the other tokens agree: ratio 1, as TRL's


def test_a_logprob_that_is_not_a_number_is_an_engine_error():
    from inspector.sources.engine import parse_completions

    choice = {"index": 0, "token_ids": [5], "finish_reason": "stop",
              "logprobs": {"tokens": ["token_id:5"], "token_logprobs": ["high"], "top_logprobs": [{}]}}
    with pytest.raises(EngineError, match="not a number"):
        parse_completions({"choices": [choice]}, "http://x", 1, 1, 0)


@pytest.mark.integration
@pytest.mark.parametrize("case", ["HTTP 500", "returned 1 completions", "did not answer within"])
def test_the_page_gives_the_message_and_keeps_serving(serve, tokenizer, models, monkeypatch, case):
    import gradio as gr

    from inspector.app.rollouts import run_callback

    def completions(body):
        if case == "HTTP 500":
            return 500, {"error": "engine crashed"}
        if case == "did not answer within":
            time.sleep(3)
        return 200, {"choices": [good_choice(tokenizer, 0)]}

    monkeypatch.setenv("INSPECTOR_MAX_TIME", "1")  # the request's time limit, which bounds the engine call
    url = serve({"/v1/models": MODELS, "/tokenize": tokenize_route(tokenizer), "/v1/completions": completions})
    settings = dict(use_chat=True, max_new_tokens=4, do_sample=True, temperature=0.7, top_k=0, top_p=1.0, seed=0,
                    samples=2, stop_choice="EOS token", stop_custom="", attention="tokenizer", compare_masks=False)
    with pytest.raises(gr.Error) as err:
        run_callback("", "", "", "", "Say hi.", *settings.values(), engine_url=url)
    assert url in str(err.value) and case in str(err.value)
    monkeypatch.delenv("INSPECTOR_MAX_TIME")
    r = run_callback("", "", "", "", "Say hi.", *settings.values(), engine_url="")[0]
    assert r.batch_size == 2 and r.engine["engine"] == "transformers.generate"


def test_a_server_launched_niced_is_lowered_with_its_scheduler_group(tmp_path):
    """A server booting beside other work runs at the niceness asked for, and so does its session's scheduler group:
    under Linux's autogroups a new session's nice values weigh only inside that group, which would take half the CPU
    from the page it boots beside."""
    from inspector.sources.serving import launch_vllm

    stand_in = tmp_path / "python"
    stand_in.write_text("#!/bin/sh\nexec sleep 60\n")
    stand_in.chmod(0o755)
    server = launch_vllm(tmp_path, python=str(stand_in), niceness=10)
    try:
        time.sleep(0.5)
        import os

        # os.nice adds to the niceness this process runs at (10 more, at most 19); the group's value is absolute
        assert os.getpriority(os.PRIO_PROCESS, server.process.pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
        group = f"/proc/{server.process.pid}/autogroup"
        if os.path.exists(group):
            assert open(group).read().split()[-1] == "10"
    finally:
        server.stop()
        server.log_path.unlink(missing_ok=True)
    assert server.process.poll() is not None
