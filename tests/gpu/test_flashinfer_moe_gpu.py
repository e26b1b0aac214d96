"""FlashInfer's SM90 CUTLASS MXFP4 MoE (kernels.flashinfer_moe) against the torch reference on GPT-OSS-20B's
expert shape (E 32, top-4, H = I = 2880: both padded to 2944 for it), with the inputs and the bf16
tolerance the Triton MXFP4 kernel is held to (tests/kernels/test_moe_gpt_oss.py: relative error 1e-2);
Hopper with FlashInfer installed only."""
from __future__ import annotations

import pytest
import torch

from laminar.ops import torch_ops as R

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                                reason="needs a Hopper GPU")
SWIGLU = (1.702, 7.0)
TOL = 1e-2  # bf16, as tests/kernels/helpers.TOL on a GPU
SHAPES = [(1, 32, 4, 2880, 2880), (64, 32, 4, 2880, 2880), (512, 32, 4, 2880, 2880), (300, 32, 4, 2880, 1440)]


@pytest.fixture(scope="module")
def fim():
    """kernels.flashinfer_moe, imported here: on a CPU run tests/kernels/conftest.py must import the kernels first."""
    pytest.importorskip("flashinfer")
    import laminar_kernels.flashinfer_moe as fim

    return fim


def _inputs(n_tok: int, n_experts: int, top_k: int, hidden: int, inter: int):
    """test_moe_gpt_oss's: gate / up pre-activations of a few units std, so that many pass the clamp at 7."""
    gen = torch.Generator().manual_seed(n_tok * 7 + hidden)
    randn = lambda *s, scale=1.0: (torch.randn(*s, generator=gen) * scale).cuda()  # noqa: E731

    def mxfp4(rows: int, cols: int, exponents: tuple[int, int]):
        blocks = torch.randint(0, 256, (n_experts, rows, cols // 32, 16), dtype=torch.uint8, generator=gen)
        return blocks.cuda(), torch.randint(*exponents, (n_experts, rows, cols // 32), dtype=torch.uint8,
                                            generator=gen).cuda()

    x = randn(n_tok, hidden).bfloat16()
    up, down = mxfp4(2 * inter, hidden, (123, 127)), mxfp4(hidden, inter, (117, 120))
    b13, b2 = randn(n_experts, 2 * inter, scale=2.0).bfloat16(), randn(n_experts, hidden).bfloat16()
    weights, ids = R.route_topk(randn(n_tok, n_experts, scale=3.0), top_k, True)
    ref = R.fused_moe(x.float(), up[0], down[0], weights, ids, b13=b13.float(), b2=b2.float(), w13_scales=up[1],
                      w2_scales=down[1], swiglu=SWIGLU)
    return x, up, down, b13, b2, weights, ids, ref


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape and torch.isfinite(out).all()
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_flashinfer_moe_matches_reference(fim, shape):
    x, up, down, b13, b2, weights, ids, ref = _inputs(*shape)
    prepared = fim.prepare(*up, *down, b13, b2, SWIGLU, choice="flashinfer")
    assert prepared is not None, f"FlashInfer declined or failed: {fim.failed()}"
    assert rel_err(fim.fused_moe(x, weights, ids, prepared), ref) <= TOL


def test_scale_interleave_matches_flashinfer(fim):
    """Ours (pure torch, checked on the CPU against its documented layout) is FlashInfer's own helper."""
    scales = torch.randint(0, 256, (4, 5888, 92), dtype=torch.uint8, device="cuda")
    lib = fim.imported(fim.NAME)
    assert torch.equal(fim.interleave_scales(scales), lib.interleave_moe_scales_for_sm90_mixed_gemm(scales))


def test_served_through_our_fused_moe_and_in_a_cuda_graph(fim):
    """The engine's path: kernels.fused_moe with `prepared` returns FlashInfer's result, eager and
    replayed from a CUDA graph (decode steps are graphs), and switches nothing off."""
    import laminar_kernels as K
    from laminar_kernels.mxfp4_layout import to_kernel_layout

    x, up, down, b13, b2, weights, ids, ref = _inputs(64, 32, 4, 2880, 2880)
    prepared = fim.prepare(*up, *down, b13, b2, SWIGLU, choice="flashinfer")
    (w13, s13), (w2, s2) = to_kernel_layout(*up), to_kernel_layout(*down)

    def run() -> torch.Tensor:
        return K.fused_moe(x, w13, w2, weights, ids, b13=b13, b2=b2, w13_scales=s13, w2_scales=s2, swiglu=SWIGLU,
                           prepared=prepared)

    eager = run()
    assert rel_err(eager, fim.fused_moe(x, weights, ids, prepared)) <= 1e-3 and fim.NAME not in fim.failed()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    graph.replay()
    torch.cuda.synchronize()
    assert rel_err(out, ref) <= TOL and fim.NAME not in fim.failed()
