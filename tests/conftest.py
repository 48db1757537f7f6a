"""Shared fixtures. The real default models load once per test session and are only ever read."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see inspector/__init__.py


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: runs the real default models")
    config.addinivalue_line("markers", "browser: drives the real app in headless Chromium")
    config.addinivalue_line("markers", "slow: minutes (builds an environment); CI runs it too")


@pytest.fixture(scope="session")
def models():
    from inspector import load_models

    return load_models()


@pytest.fixture(scope="session")
def greedy_rollout(models):
    from inspector import run_rollout

    return run_rollout(
        models,
        ["Write a short happy sentence about the sea.", "What is 2 + 2? Answer with one number.", "Hi"],
        max_new_tokens=24, do_sample=False, seed=0,
    )


@pytest.fixture(scope="session")
def sampled_rollout(models):
    from inspector import run_rollout

    return run_rollout(
        models,
        ["Tell me about your favourite food.", "Describe a rainy day in one sentence."],
        max_new_tokens=24, do_sample=True, temperature=0.7, top_k=0, top_p=1.0, seed=1234,
    )


@pytest.fixture(scope="session")
def app_url(models):
    """The real app, launched once on a free loopback port for the client and browser tests."""
    from inspector.app import build_app, launch_kwargs

    demo = build_app()
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, **launch_kwargs())
    yield demo.local_url.rstrip("/")
    demo.close()


def _vllm(request, mode: str) -> str:
    """A real vLLM CPU server (its own environment, built by scripts/vllm_env.sh) serving the default policy,
    started once per session per logprobs mode, stopped by its process id when the session ends."""
    from inspector.sources.serving import start_vllm

    running = os.environ.get(f"INSPECTOR_TEST_VLLM_{mode.upper()}")  # a server already up (local iterations)
    if running:
        return running
    server = start_vllm(logprobs_mode=mode)
    request.addfinalizer(server.stop)
    return server.url


@pytest.fixture(scope="session")
def vllm_processed(request):
    return _vllm(request, "processed_logprobs")


@pytest.fixture(scope="session")
def vllm_raw(request):
    return _vllm(request, "raw_logprobs")
