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
def policy_copy(tmp_path_factory):
    """A factory: `policy_copy(name, **changes)` is a copy of the default policy's folder (weights linked, the other
    files copied) named `name`, whose generation_config.json gets `changes`."""
    import json
    import shutil
    from pathlib import Path

    from inspector.models import DEFAULT_POLICY
    from inspector.weights import resolve_source

    def make(name: str, **changes) -> Path:
        source = Path(resolve_source(DEFAULT_POLICY))
        folder = tmp_path_factory.mktemp(name) / name
        folder.mkdir()
        for path in source.iterdir():
            if path.name.endswith(".safetensors"):
                (folder / path.name).symlink_to(path)
            elif path.is_file():
                shutil.copy(path, folder / path.name)
        config = json.loads((folder / "generation_config.json").read_text())
        (folder / "generation_config.json").write_text(json.dumps(config | changes))
        return folder

    return make


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


_BOOTING: dict = {}  # logprobs mode -> a vLLM server launched at collection, booting while other tests run
VLLM_FIXTURES = {"vllm_processed": "processed_logprobs", "vllm_raw": "raw_logprobs"}


def pytest_collection_finish(session):
    """Launch the vLLM servers the selected tests need (after -k / -m deselection), without waiting: each boots (a
    minute or more on this CPU) while the tests before the engine's run, and its fixture waits for it to answer."""
    from inspector.sources.serving import launch_vllm

    if session.config.option.collectonly:
        return
    wanted = {mode for item in session.items for name, mode in VLLM_FIXTURES.items()
              if name in getattr(item, "fixturenames", ())}
    for mode in sorted(wanted):
        if not os.environ.get(f"INSPECTOR_TEST_VLLM_{mode.upper()}") and mode not in _BOOTING:
            try:
                # at a lower priority: booting must not slow the page tests that run meanwhile
                _BOOTING[mode] = launch_vllm(logprobs_mode=mode, niceness=10)
            except Exception as exc:  # noqa: BLE001 - the fixture starts it again and reports what fails
                _BOOTING[mode] = exc


def pytest_sessionfinish(session, exitstatus):
    for server in _BOOTING.values():
        if not isinstance(server, Exception):
            server.stop()


def _vllm(request, mode: str) -> str:
    """A real vLLM CPU server (its own environment, built by scripts/vllm_env.sh) serving the default policy,
    once per session per logprobs mode (launched at collection), stopped by its process id when the session ends."""
    from inspector.sources.serving import start_vllm, wait_healthy

    running = os.environ.get(f"INSPECTOR_TEST_VLLM_{mode.upper()}")  # a server already up (local iterations)
    if running:
        return running
    booting = _BOOTING.get(mode)
    if booting is None or isinstance(booting, Exception):
        server = start_vllm(logprobs_mode=mode)
        request.addfinalizer(server.stop)
        return server.url
    return wait_healthy(booting).url


@pytest.fixture(scope="session")
def vllm_processed(request):
    return _vllm(request, VLLM_FIXTURES["vllm_processed"])


@pytest.fixture(scope="session")
def vllm_raw(request):
    return _vllm(request, VLLM_FIXTURES["vllm_raw"])
