"""A short run of perf/soak.py (the 30-minute soak's CI-sized version): good, bad, cancelled,
killed and disconnected clients at once; every request ends as it should and tritonserver's fds,
threads and RSS stay flat."""
from __future__ import annotations

import json
import subprocess
import sys

from laminar.client.triton_server import ROOT


def test_short_mixed_soak(tmp_path):
    out = tmp_path / "soak.json"
    cmd = [sys.executable, str(ROOT / "perf" / "soak.py"), "--duration", "25", "--warmup", "10",
           "--sample-every", "5", "--clients", "4", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    result = json.loads(out.read_text())
    assert not result["failures"]
    assert set(result["requests"]) == {"good", "bad", "cancelled", "killed_client", "http_disconnect"}
