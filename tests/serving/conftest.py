"""Session fixtures: the demo checkpoint, a model repository holding the shipped model in both
schedule modes, and one real tritonserver serving it."""
from __future__ import annotations

from pathlib import Path

import pytest

from laminar import EngineArgs, LLMEngine
from laminar.client.triton_server import TritonServer, write_variant

MODES = {"layered": "laminar", "chunked": "laminar_chunked"}
SLO_MODEL = "laminar_slo"  # layered prefill under the SLO policy


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("model_repository")
    for mode, name in MODES.items():
        write_variant(repo, name, {"schedule_mode": mode})
    write_variant(repo, SLO_MODEL, {"schedule_mode": "layered", "prefill_policy": "slo", "tbt_slo_ms": "50"})
    return repo


def start_server(repo: Path, demo_model: Path, log: Path, supervised: bool = False) -> TritonServer:
    server = TritonServer(repo, {"LAMINAR_MODEL": str(demo_model), "LAMINAR_DEVICE": "cpu"}, log, supervised)
    try:
        server.wait_ready()
    except Exception:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def server(model_repo, demo_model, tmp_path_factory) -> TritonServer:
    server = start_server(model_repo, demo_model, tmp_path_factory.mktemp("logs") / "tritonserver.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def offline_engines(demo_model) -> dict[str, LLMEngine]:
    """The engine run in the test process with the served configuration's defaults."""
    return {mode: LLMEngine(EngineArgs(model=str(demo_model), device="cpu", schedule_mode=mode)) for mode in MODES}
