"""build.sh's attention-library step: nothing on a machine without CUDA (CPU machines and CI stay
as they were), the pinned libraries on one with CUDA, and a failed install never fails the set-up.
Runs the step alone, over a stand-in venv python that answers the CUDA question and records
every call (no network, no pip)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "{log}"
case "$*" in
  *torch.version.cuda*) echo "{cuda}" ;;
  *numpy.__version__*) printf 'torch==2.11.0+cu130\\nnumpy==1.26.4\\n' ;;
  *"pip install"*) exit {pip_rc} ;;
esac
"""


def run_step(tmp_path: Path, cuda: str, pip_rc: int = 0) -> list[str]:
    """build.sh's functions with only setup_attention_libs run; the calls the venv python got."""
    text = (ROOT / "build.sh").read_text()
    script = tmp_path / "build.sh"
    script.write_text(text[: text.index("cmd=${1:-setup}")] + "setup_attention_libs\n")
    log = tmp_path / "calls.log"
    log.touch()
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON.format(log=log, cuda=cuda, pip_rc=pip_rc))
    python.chmod(0o755)
    subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True, timeout=30)
    return log.read_text().splitlines()


def test_cpu_machine_installs_nothing(tmp_path):
    calls = run_step(tmp_path, cuda="")
    assert len(calls) == 1 and "torch.version.cuda" in calls[0]
    assert not (tmp_path / ".venv" / ".laminar-attention-pins").exists()


@pytest.mark.parametrize("cuda, extra", [("13.0", "[cu13]"), ("12.8", "")])
def test_cuda_machine_installs_the_pinned_libraries_once(tmp_path, cuda, extra):
    calls = run_step(tmp_path, cuda=cuda)
    pip = [c for c in calls if c.startswith("-m pip install")]
    assert len(pip) == 1 and "-c" in pip[0].split()
    for pin in ("flashinfer-python==0.6.13", "flashinfer-cubin==0.6.13", "nvidia-cudnn-frontend==1.32.0",
                f"flash-attn-4{extra}==4.0.0b36", f"nvidia-cutlass-dsl{extra}==4.8.1"):
        assert pin in pip[0].split()
    again = run_step_again(tmp_path)
    assert not [c for c in again if "pip install" in c]  # the stamp matches: nothing reinstalled


def run_step_again(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    log.write_text("")
    subprocess.run(["bash", str(tmp_path / "build.sh")], check=True, capture_output=True, timeout=30)
    return log.read_text().splitlines()


def test_failed_install_warns_and_goes_on(tmp_path):
    calls = run_step(tmp_path, cuda="13.0", pip_rc=1)
    assert any("pip install" in c for c in calls)
    assert not (tmp_path / ".venv" / ".laminar-attention-pins").exists()  # tried again next time
