"""Trains the demo Qwen3-MoE on its corpus, so the served demo model speaks corpus-like English.

A plain-torch Qwen3-MoE forward (the same maths as transformers' Qwen3MoeForCausalLM and the
engine: RMSNorm, q/k head norms, neox RoPE, causal GQA attention, softmax router with the top-k
weights renormalised, SwiGLU experts) over the checkpoint's own tensor names, so the trained
weights are written back under the names the engine and transformers load.

Reproducible on one machine: seeded initial weights and batches, one fixed thread count, and
torch's deterministic algorithms, so `./build.sh` in CI writes the same bytes every time.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
import torch.nn.functional as F

SEED = 0
THREADS = 1          # fixed: another count may sum in another order and change the bytes
STEPS = 500
BATCH = 16
WINDOW = 96          # tokens per training sequence
LR = 6e-3
WARMUP = 20


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Neox style: the head's two halves rotate as (real, imaginary) pairs."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)


def rope_table(cfg: dict, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = cfg["head_dim"]
    inv_freq = 1.0 / cfg["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return freqs.cos(), freqs.sin()


def attention(w: dict, p: str, x: torch.Tensor, cfg: dict, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    b, t, _ = x.shape
    d, heads, kv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    eps = cfg["rms_norm_eps"]
    q = rms_norm((x @ w[f"{p}.q_proj.weight"].T).view(b, t, heads, d), w[f"{p}.q_norm.weight"], eps)
    k = rms_norm((x @ w[f"{p}.k_proj.weight"].T).view(b, t, kv, d), w[f"{p}.k_norm.weight"], eps)
    v = (x @ w[f"{p}.v_proj.weight"].T).view(b, t, kv, d)
    q, k = rope(q, cos[:, None], sin[:, None]), rope(k, cos[:, None], sin[:, None])
    k, v = (z.repeat_interleave(heads // kv, dim=2) for z in (k, v))
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return out.transpose(1, 2).reshape(b, t, heads * d) @ w[f"{p}.o_proj.weight"].T


def moe(w: dict, p: str, x: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Each token's top-k experts, weighted by its renormalised router probabilities."""
    flat = x.reshape(-1, x.shape[-1])
    probs = torch.softmax(flat @ w[f"{p}.gate.weight"].T, dim=-1)
    top, chosen = probs.topk(cfg["num_experts_per_tok"], dim=-1)
    if cfg["norm_topk_prob"]:
        top = top / top.sum(-1, keepdim=True)
    out = torch.zeros_like(flat)
    for e in range(cfg["num_experts"]):
        rows, slot = (chosen == e).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        h = flat[rows]
        e_p = f"{p}.experts.{e}"
        act = F.silu(h @ w[f"{e_p}.gate_proj.weight"].T) * (h @ w[f"{e_p}.up_proj.weight"].T)
        out = out.index_add(0, rows, (act @ w[f"{e_p}.down_proj.weight"].T) * top[rows, slot, None])
    return out.view_as(x)


def forward(w: dict, ids: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Logits [batch, tokens, vocab] for token ids [batch, tokens]."""
    eps = cfg["rms_norm_eps"]
    cos, sin = rope_table(cfg, ids.shape[1])
    x = w["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        x = x + attention(w, f"{p}.self_attn", rms_norm(x, w[f"{p}.input_layernorm.weight"], eps), cfg, cos, sin)
        x = x + moe(w, f"{p}.mlp", rms_norm(x, w[f"{p}.post_attention_layernorm.weight"], eps), cfg)
    return rms_norm(x, w["model.norm.weight"], eps) @ w["lm_head.weight"].T


def learning_rate(step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    done = (step - WARMUP) / max(1, STEPS - WARMUP)
    return LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))


def samples(text: str, encode: Callable[[str], list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The corpus as one token stream (windows at any offset), and windows that open where a
    sentence or line does, tokenized from there as a prompt would be: without them the model
    only knows the middle of the text and stumbles when a prompt is all its context."""
    stream = torch.tensor(encode(text), dtype=torch.int64)
    starts = [m.end() for m in re.finditer(r"(?:^|[.!?]\s+|\n+)", text)]
    openings = [ids for ids in (encode(text[s:s + 16 * WINDOW])[:WINDOW + 1] for s in starts) if len(ids) > WINDOW]
    return stream, torch.tensor(openings, dtype=torch.int64)


def batch(stream: torch.Tensor, openings: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Half the rows from random offsets of the stream, half from random openings."""
    half = BATCH // 2
    starts = torch.randint(0, len(stream) - WINDOW - 1, (BATCH - half,), generator=gen).tolist()
    rows = [stream[s:s + WINDOW + 1] for s in starts]
    return torch.stack(rows + list(openings[torch.randint(0, len(openings), (half,), generator=gen)]))


def train(weights: dict[str, torch.Tensor], cfg: dict, text: str, encode: Callable[[str], list[int]],
          log: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """Next-token training on windows of the corpus; returns the trained weights. The thread
    count and deterministic mode are the process's own again afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(weights, cfg, text, encode, log)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(weights: dict[str, torch.Tensor], cfg: dict, text: str, encode: Callable[[str], list[int]],
           log: Callable[[str], None] | None) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(SEED)
    stream, openings = samples(text, encode)
    params = {name: t.clone().requires_grad_(True) for name, t in weights.items()}
    opt = torch.optim.AdamW(params.values(), lr=LR, betas=(0.9, 0.95), weight_decay=0.0)
    for step in range(STEPS):
        rows = batch(stream, openings, gen)
        logits = forward(params, rows[:, :-1], cfg)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
        for group in opt.param_groups:
            group["lr"] = learning_rate(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        opt.step()
        if log and (step % 50 == 0 or step == STEPS - 1):
            log(f"step {step} loss {loss.item():.3f}")
    return {name: t.detach().contiguous() for name, t in params.items()}
