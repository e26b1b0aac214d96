"""Logits and greedy tokens against transformers' own Qwen3 / Qwen3-MoE / GPT-OSS on random tiny checkpoints.

GPT-OSS runs from both checkpoint formats; transformers reads the MXFP4 one itself
(dequantizing the experts), so the release's layout is checked against its reader.
"""
from __future__ import annotations

import pytest
import torch
from engine_utils import LogitsRecorder, greedy, make_engine
from transformers import AutoModelForCausalLM, Mxfp4Config


def hf_logits(model_dir, ids: list[int]) -> torch.Tensor:
    quantized = (model_dir / "config.json").read_text().find('"quantization_config"') >= 0
    extra = {"quantization_config": Mxfp4Config(dequantize=True)} if quantized else {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager",
                                                 **extra).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("fixture", ["moe_checkpoint", "moe_checkpoint_5", "dense_checkpoint", "gpt_oss_mxfp4",
                                     "gpt_oss_bf16"])
@pytest.mark.parametrize("mode,groups", [("layered", 2), ("layered", 3), ("chunked", 1)])
def test_logits_match_transformers(fixture, mode, groups, request):
    """37 prompt tokens in 16-token chunks: chunked prefill, and layered prefill over 2 or 3 groups
    (GPT-OSS: its sliding layers see 8 of them)."""
    model_dir = request.getfixturevalue(fixture)
    engine = make_engine(model_dir, schedule_mode=mode, max_num_batched_tokens=16, max_num_seqs=8,
                         num_stages=groups, group_token_thresholds=())
    recorder = LogitsRecorder(engine)
    prompt = torch.randint(1, 257, (37,), generator=torch.Generator().manual_seed(3)).tolist()
    params = greedy(6)
    engine.add_request("r", prompt, params)
    out: list[int] = []
    while engine.has_unfinished_requests():
        for o in engine.step():
            out.extend(o.new_token_ids)
    ours = torch.stack(recorder.logits[id(params)])
    ref = hf_logits(model_dir, prompt + out[:-1])[len(prompt) - 1:]
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert out == ref.argmax(-1).tolist()
