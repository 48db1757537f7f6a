"""scripts/gpu_check.py, the script a GPU machine runs, on this CPU: it must run as it is there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--prompts", "2",
                           "--tokens", "6", "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bf16 sampler vs float32 trainer" in done.stdout
    summary = json.loads(out.read_text())
    assert summary["policy_dtype"] == "torch.bfloat16" and summary["rollout_shape"][0] == 2
    rows = summary["mismatch"]
    assert set(rows) == {f"bf16 sampler vs {p} trainer" for p in ("float32", "bfloat16-fp32-head", "bfloat16")}
    # a bf16 sampler against an fp32 recompute is a real, numerical gap
    assert rows["bf16 sampler vs float32 trainer"]["mean_abs_diff"] > 1e-3
    assert rows["bf16 sampler vs float32 trainer"]["diagnosis"] == "numerical"
