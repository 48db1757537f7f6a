"""Shared fixtures. The real default models load once per test session and are only ever read."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see inspector/__init__.py
# what the apps a session launches write (gradio's files, uploaded runs) goes to a folder of the session's own, which
# goes with it: two sessions at once (scripts/test.sh) never share one, and nothing is left in /tmp
_SESSION_TMP = tempfile.mkdtemp(prefix="inspector-tests-")
os.environ.setdefault("GRADIO_TEMP_DIR", os.path.join(_SESSION_TMP, "gradio"))
os.environ.setdefault("INSPECTOR_RUN_UPLOADS", os.path.join(_SESSION_TMP, "run-uploads"))


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: runs the real default models")
    config.addinivalue_line("markers", "browser: drives the real app in headless Chromium")
    config.addinivalue_line("markers", "slow: minutes (builds an environment); CI runs it too")
    config.addinivalue_line("markers", "vllm: needs a real vLLM server (marked at collection, from its fixtures)")


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


def _needs_vllm(item) -> bool:
    return any(name in getattr(item, "fixturenames", ()) for name in VLLM_FIXTURES)


@pytest.hookimpl(tryfirst=True)  # before -m deselects: `-m vllm` / `-m "not vllm"` select on the marker added here
def pytest_collection_modifyitems(session, config, items):
    """Marks the tests that need a vLLM server `vllm`, and orders the modules: first those that time nothing against
    a page, then the page in Chromium (which waits with timeouts), then those that need a vLLM server, which boot
    meanwhile at a low priority. A module keeps its order (the sort is stable and the key is its module's), so its
    module-scoped fixtures are set up once."""
    stage: dict = {}
    for item in items:
        if _needs_vllm(item):
            item.add_marker(pytest.mark.vllm)
        rank = 2 if _needs_vllm(item) else 1 if item.get_closest_marker("browser") else 0
        stage[item.module] = max(stage.get(item.module, 0), rank)
    items.sort(key=lambda item: stage[item.module])


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
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


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
