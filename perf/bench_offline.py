"""Offline engine benchmark: both schedule modes on one set of weights, in one process.

Workload per mode: a batch of decoding requests at a fixed context keeps generating
while long prompts arrive one after another. Reports decode step time against its
memory floor, host overhead per step, TBT while a prompt is prefilled, TTFT, energy
per token, and expert bytes; plus one long prompt prefilled alone (TTFT against one
full pass of it, expert bytes). Every engine carries the cost model (profiled once on
the shared executor), so each mode also reports the model's step-time prediction error.

A mode is schedule_mode:budget[:gN][:sloMS][:unfused]: gN sets num_stages (the static policy's largest
group count), sloMS sets prefill_policy slo with tbt_slo_ms, e.g. layered:8192:g4, layered:8192:slo100;
unfused runs the fused kernels' steps as separate kernels instead (laminar.ops.set_fused; graphs are
recaptured), so that one call measures what the fusion buys on the same weights.
The decode batch shrinks to what the KV cache holds (the report says so).

On CUDA each mode also profiles a few decode steps (perf/step_breakdown.py) and reports per step the
time in MoE kernels, attention, dense GEMMs and all other kernels, and the device's idle time (host).

GPU (Qwen3-30B-A3B shapes, random weights):
  python perf/bench_offline.py --model perf/models/qwen3-30b-a3b --load-format dummy
GPU, the fused small ops on and off (decode-step breakdown of each; this order recaptures the graphs once):
  python perf/bench_offline.py --model perf/models/qwen3-30b-a3b --load-format dummy \
    --modes layered:8192 layered:8192:unfused --prompts 2048 --tag fused
GPU (dense Qwen3-8B / Qwen3-32B shapes: no experts, so layered prefill saves no expert reloads):
  python perf/bench_offline.py --model perf/models/qwen3-8b --load-format dummy --tag qwen3-8b
GPU (GPT-OSS-20B shapes, random MXFP4 experts; perf/gpu_gpt_oss_session.sh):
  python perf/bench_offline.py --model perf/models/gpt-oss-20b --load-format dummy --modes layered:8192 chunked:512 \
    chunked:2048 --prompts 8192 --tag gpt-oss-20b
CPU (the demo model):
  python perf/bench_offline.py --model demo_model --preset cpu
Asynchronous scheduling against synchronous stepping, every mode both ways in one process:
  python perf/bench_offline.py --model perf/models/qwen3-30b-a3b --load-format dummy --modes layered:8192 \
    chunked:2048 --async-compare
Structured outputs' cost instead (perf/bench_structured.py: half of a 64-row decode batch under a
JSON schema, and the inter-token gaps while 20 new schemas compile):
  python perf/bench_offline.py --model perf/models/qwen3-30b-a3b --load-format dummy --structured
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from analyze import percentile
from step_breakdown import COLUMNS, breakdown

from laminar import EngineArgs, LLMEngine, SamplingParams
from laminar.config import ModelConfig
from laminar.cost_model import CostModel
from laminar.executor import Executor
from laminar.model_runner import ModelRunner

PRESETS = {
    "gpu": dict(decode_batch=64, decode_context=2048, prompts=[2048, 8192, 16384], alone_prompt=8192,
                decode_steps=30, modes=["layered:8192", "layered:8192:g4", "layered:8192:slo100",
                                        "chunked:8192:slo100", "chunked:512", "chunked:2048"], num_stages=16),
    "cpu": dict(decode_batch=8, decode_context=128, prompts=[256, 1024], alone_prompt=1024,
                decode_steps=40, modes=["layered:1024", "layered:1024:slo30", "chunked:1024:slo30", "chunked:128",
                                        "chunked:256"], num_stages=4),
}
ASYNC = "+async"  # --async-compare: the suffix of a mode's row run with async_scheduling


def measure_bandwidth(device: torch.device) -> float | None:
    """Device copy bandwidth in bytes/s, counting bytes read and written."""
    if device.type != "cuda":
        return None
    x = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    return 2 * x.numel() * 10 / (time.perf_counter() - start)


def random_prompt(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(1000, vocab - 1000) for _ in range(n)]


class Run:
    """Drives one engine and records per-step and per-request timings, and the cost model's predictions."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.first_token: dict[str, float] = {}
        self.predictions: list[tuple[float, float]] = []  # (predicted, measured) seconds, once recording

    def step(self) -> float:
        """Wall time of one step() call: with async scheduling the device runs the next step while
        the call reads the previous one's tokens, so this (not the step record) is the time between
        tokens in both cases."""
        start = time.perf_counter()
        for out in self.engine.step():
            if out.num_output_tokens == 1:
                self.first_token[out.request_id] = time.perf_counter()
        wall = time.perf_counter() - start
        last = self.engine.last_step
        if last is None:
            return 0.0
        if last.predicted_s is not None:
            self.predictions.append((last.predicted_s, last.total_s))
        return wall

    def prediction_error(self) -> dict:
        """Median and p90 of |predicted - measured| / measured over the recorded steps."""
        errors = [abs(p - m) / m for p, m in self.predictions if m > 0]
        return {"steps": len(errors), "median_abs_err": statistics.median(errors) if errors else None,
                "p90_abs_err": percentile(errors, 0.9) if errors else None}


def non_expert_bytes(engine: LLMEngine) -> int:
    """Weights of rank 0's shard that every decode step reads besides experts (attention, router, norms, LM head).

    Expert tensors (w13 / w2 and their MXFP4 scales and biases) are read per touched expert instead.
    """
    model, total = engine.executor.runner.model, 0
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1].startswith(("w13", "w2")) or name == "embed_tokens":
            continue
        total += p.numel() * p.element_size()
    if model.lm_head is None:
        total += model.embed_tokens.numel() * model.embed_tokens.element_size()
    return total


def bench_mode(engine: LLMEngine, cfg: dict, bandwidth: float | None, seed: int) -> dict:
    rng = random.Random(seed)
    vocab = engine.model_config.vocab_size
    mc = engine.model_config
    runner = engine.executor.runner
    tp = runner.tp.size
    # The floor is per GPU: each rank reads its own shard of weights and KV (rank 0's, measured).
    # Under pipeline parallelism rank 0 holds one stage's weights only: no floor.
    pipelined = runner.pp.size > 1
    kv_token_layer_bytes = 2 * runner.model.layout.num_kv_heads * mc.head_dim * runner.dtype.itemsize
    run = Run(engine)
    started = time.perf_counter()

    def phase(name: str) -> None:  # progress on stderr: a run cut by its time limit says where it was
        print(f"[{time.perf_counter() - started:7.1f} s] {name}", file=sys.stderr, flush=True)

    # The decodes start together, at decode_context tokens each: their prompts are prefilled once
    # (the KV stays in the prefix cache), then added again and admitted in one batch on their cached
    # prefixes. Prefilled in turn, the first ones would grow by every later one's prefill iterations
    # (hundreds of tokens each in layered mode): more KV than fit_decode_batch set aside, and the
    # arriving prompts then waited for the decodes to end (Qwen3-30B-A3B bf16, one H100, 2026-12-08).
    decode_prompts = [random_prompt(rng, cfg["decode_context"], vocab) for _ in range(cfg["decode_batch"])]
    prime = SamplingParams(max_tokens=1, ignore_eos=True, temperature=0.0)
    for i, prompt in enumerate(decode_prompts):
        engine.add_request(f"prime{i}", prompt, prime)
    while engine.has_unfinished_requests():
        run.step()
    long_gen = SamplingParams(max_tokens=100_000, temperature=0.0, ignore_eos=True)
    for i, prompt in enumerate(decode_prompts):
        engine.add_request(f"d{i}", prompt, long_gen)
    while sum(rid.startswith("d") for rid in run.first_token) < cfg["decode_batch"]:
        run.step()
    phase(f"{cfg['decode_batch']} decodes prefilled; warm-up prompt")

    # Warm-up: one prompt of the first size, so that kernel compilation for the mixed shapes
    # happens before anything is measured.
    engine.add_request("warmup", random_prompt(rng, cfg["prompts"][0], vocab),
                       SamplingParams(max_tokens=1, ignore_eos=True, temperature=0.0))
    while "warmup" not in run.first_token:
        run.step()
    run.predictions.clear()  # judge the cost model after its first refits, as a server runs it
    phase("decode window")

    # Decode-only window.
    s0 = engine.get_stats()
    e0, tok0, exp0 = s0.energy_joules, s0.tokens, s0.expert_bytes_total
    steps, cpu, idle = [], [], []
    for _ in range(cfg["decode_steps"]):
        steps.append(run.step())
        cpu.append(engine.last_step.cpu_s)
        idle.append(engine.last_step.device_idle_s)
    s1 = engine.get_stats()
    phase("step breakdown")
    decode_step = statistics.median(steps)  # robust to a stray slow step on a shared CPU
    experts_per_step = (s1.expert_bytes_total - exp0) / len(steps)
    context = cfg["decode_context"] + cfg["decode_steps"]
    # A sliding-window layer (GPT-OSS) needs only its window of the context.
    kv_tokens = sum(min(context, mc.window(i) or context) for i in range(mc.num_layers))
    floor_bytes = non_expert_bytes(engine) + experts_per_step / tp + cfg["decode_batch"] * kv_tokens * kv_token_layer_bytes
    result = {
        "decode_step_ms": 1e3 * decode_step,
        "decode_step_floor_ms": 1e3 * floor_bytes / bandwidth if bandwidth and not pipelined else None,
        "decode_host_overhead_frac": statistics.median(cpu) / decode_step,
        # The device waiting for the host (CUDA): host time on the critical path, whatever overlaps.
        "decode_device_idle_frac": statistics.median(idle) / decode_step if None not in idle else None,
        "decode_tokens_per_s": cfg["decode_batch"] / decode_step,
        "decode_energy_j_per_token": (s1.energy_joules - e0) / (s1.tokens - tok0) if e0 is not None else None,
        "decode_breakdown": breakdown(run.step, BREAKDOWN_STEPS, 1e3 * decode_step, runner.device),
    }

    # Long prompts arrive one at a time while the decodes continue.
    prompts = []
    for n in cfg["prompts"]:
        rid = f"p{n}"
        phase(f"prompt of {n} tokens arriving")
        s_before = engine.get_stats()
        exp_before, e_before, tok_before = s_before.expert_bytes_total, s_before.energy_joules, s_before.tokens
        arrival = time.perf_counter()
        if engine.blocks.num_free * engine.blocks.block_size < n + cfg["decode_batch"] * PROMPT_ITERATIONS:
            raise SystemExit(f"the KV cache has {engine.blocks.num_free} free blocks: a prompt of {n} tokens "
                             f"would wait for the decodes to end (fit_decode_batch set aside too little)")
        engine.add_request(rid, random_prompt(rng, n, vocab), SamplingParams(max_tokens=1, ignore_eos=True,
                                                                             temperature=0.0))
        tbt = []
        while rid not in run.first_token:
            tbt.append(run.step())
        s_after = engine.get_stats()
        prompts.append({
            "prompt_tokens": n,
            "ttft_ms": 1e3 * (run.first_token[rid] - arrival),
            "iterations": len(tbt),
            "tbt_mean_ms": 1e3 * statistics.mean(tbt),
            "tbt_p99_ms": 1e3 * percentile(tbt, 0.99),
            "tbt_max_ms": 1e3 * max(tbt),
            "expert_gb": (s_after.expert_bytes_total - exp_before) / 1e9,
            "energy_j_per_token": ((s_after.energy_joules - e_before) / (s_after.tokens - tok_before)
                                   if e_before is not None else None),
        })
    result["prompts"] = prompts
    result["cost_model"] = run.prediction_error()
    engine.abort_all()  # the decodes still running; the engine serves on

    # One long prompt alone: the expert traffic of its prefill and nothing else.
    phase("one prompt alone")
    before = engine.get_stats().expert_bytes_total
    engine.add_request("alone", random_prompt(rng, cfg["alone_prompt"], vocab),
                       SamplingParams(max_tokens=1, ignore_eos=True, temperature=0.0))
    start, iterations = time.perf_counter(), 0
    while engine.has_unfinished_requests():
        engine.step()
        iterations += 1
    result["alone_prompt_tokens"] = cfg["alone_prompt"]
    result["alone_ttft_ms"] = 1e3 * (time.perf_counter() - start)
    result["alone_iterations"] = iterations
    phase("one pass timed")
    result["alone_one_pass_ms"] = 1e3 * engine.executor.profiler.time_prompt(cfg["alone_prompt"])
    result["alone_expert_gb"] = (engine.get_stats().expert_bytes_total - before) / 1e9
    return result


BREAKDOWN_STEPS = 5  # profiled decode steps per mode
# KV set aside per decode for each prompt's iterations while the decodes run (a token each). On an
# H100 an 8k prompt took 17 (layered, 16 stages); a prompt that takes more eats into the slack of
# the later ones, and the check at each arrival stops the run if none is left.
PROMPT_ITERATIONS = 64


def breakdown_lines(report: dict) -> list[str]:
    """The decode-step breakdown table (CUDA runs only)."""
    rows = [(mode, r["decode_breakdown"]) for mode, r in report["modes"].items() if r.get("decode_breakdown")]
    if not rows:
        return []
    lines = ["", "Decode step, where the time goes (ms per step; kernels from torch.profiler over "
             f"{BREAKDOWN_STEPS} steps, idle = step - device busy: host time on the critical path):", "",
             "| mode | step | " + " | ".join(COLUMNS) + " | device busy | idle (host) | kernels |",
             "|---|---|" + "---|" * len(COLUMNS) + "---|---|---|"]
    for mode, b in rows:
        cells = " | ".join(f"{b[f'{c}_ms']:.2f}" for c in COLUMNS)
        lines.append(f"| {mode} | {b['step_ms']:.2f} | {cells} | {b['busy_ms']:.2f} | {b['idle_ms']:.2f} | "
                     f"{b['kernels_per_step']:.0f} |")
    return lines


def markdown(report: dict) -> str:
    lines = [f"# Offline engine benchmark ({report['device']})", "", f"Command: `{report['command']}`", "",
             f"Decode batch: {report['decode_batch']} (KV cache: {report.get('kv_cache_tokens', '-')} tokens)", "",
             "| mode | decode step ms (median) | floor ms | host overhead | decode tok/s | J/token (decode) | "
             "alone-prompt expert GB | alone TTFT ms (iterations) | one pass ms | cost model error median / p90 (steps) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, f="{:.2f}": "-" if v is None else f.format(v)  # noqa: E731
    for mode, r in report["modes"].items():
        err = r["cost_model"]
        lines.append(f"| {mode} | {fmt(r['decode_step_ms'])} | {fmt(r['decode_step_floor_ms'])} | "
                     f"{fmt(100 * r['decode_host_overhead_frac'], '{:.1f}%')} | {fmt(r['decode_tokens_per_s'], '{:.1f}')} | "
                     f"{fmt(r['decode_energy_j_per_token'], '{:.3f}')} | {fmt(r['alone_expert_gb'])} | "
                     f"{fmt(r['alone_ttft_ms'], '{:.0f}')} ({r['alone_iterations']}) | {fmt(r['alone_one_pass_ms'], '{:.0f}')} | "
                     f"{fmt(err['median_abs_err'], '{:.1%}')} / {fmt(err['p90_abs_err'], '{:.1%}')} ({err['steps']}) |")
    lines += breakdown_lines(report)
    pairs = [(mode, mode + ASYNC) for mode in report["modes"] if mode + ASYNC in report["modes"]]
    if pairs:
        lines += ["", "Asynchronous scheduling (the host plans step N+1 while the device runs step N; host overhead "
                  "of an async row is host time hidden behind the device; device idle: the share of a decode step the "
                  "device waits for the host, CUDA):", "",
                  "| mode | decode step ms sync | async | saved per step | device idle sync | async | "
                  "alone TTFT ms sync | async |",
                  "|---|---|---|---|---|---|---|---|"]
        for sync, overlapped in pairs:
            a, b = report["modes"][sync], report["modes"][overlapped]
            saved = 1 - b["decode_step_ms"] / a["decode_step_ms"]
            lines.append(f"| {sync} | {a['decode_step_ms']:.2f} | {b['decode_step_ms']:.2f} | {saved:.1%} | "
                         f"{fmt(a['decode_device_idle_frac'], '{:.1%}')} | {fmt(b['decode_device_idle_frac'], '{:.1%}')} | "
                         f"{a['alone_ttft_ms']:.0f} | {b['alone_ttft_ms']:.0f} |")
    lines += ["", "Prompts arriving while the decode batch runs:", "",
              "| mode | prompt | TTFT ms | iterations | TBT mean ms | TBT p99 ms | TBT max ms | expert GB | J/token |",
              "|---|---|---|---|---|---|---|---|---|"]
    for mode, r in report["modes"].items():
        for p in r["prompts"]:
            lines.append(f"| {mode} | {p['prompt_tokens']} | {p['ttft_ms']:.0f} | {p['iterations']} | "
                         f"{p['tbt_mean_ms']:.2f} | {p['tbt_p99_ms']:.2f} | {p['tbt_max_ms']:.2f} | "
                         f"{p['expert_gb']:.2f} | {fmt(p['energy_j_per_token'], '{:.3f}')} |")
    return "\n".join(lines) + "\n"


def mode_args(entry: str, base: dict) -> tuple[EngineArgs, bool]:
    """schedule_mode:budget[:gN][:sloMS][:unfused] -> (EngineArgs, whether the fused kernels run)."""
    mode, budget, *options = entry.split(":")
    values = dict(base, schedule_mode=mode, max_num_batched_tokens=int(budget), max_num_seqs=min(256, int(budget)))
    fused = "unfused" not in options
    for option in options:
        if option == "unfused":
            continue
        if option.startswith("g"):
            values["num_stages"] = int(option[1:])
        elif option.startswith("slo"):
            values.update(prefill_policy="slo", tbt_slo_ms=float(option[3:]), num_stages=None)
        else:
            raise SystemExit(f"mode {entry!r}: unknown option {option!r} (gN, sloMS or unfused)")
    return EngineArgs(**values), fused


def fit_decode_batch(cfg: dict, runner: ModelRunner) -> int:
    """The preset's decode batch, or as many decodes as the KV cache holds beside the longest prompt.

    Each decode grows by a token an iteration: through the decode window, the profiled steps and
    the iterations of the warm-up prompt and of each arriving prompt (PROMPT_ITERATIONS each)."""
    capacity = runner.num_blocks * runner.block_size
    growth = cfg["decode_steps"] + BREAKDOWN_STEPS + PROMPT_ITERATIONS * (1 + len(cfg["prompts"]))
    per_decode = cfg["decode_context"] + growth + runner.block_size
    room = capacity - max(cfg["prompts"] + [cfg["alone_prompt"]]) - runner.block_size
    batch = max(1, min(cfg["decode_batch"], room // per_decode))
    if batch < cfg["decode_batch"]:
        print(f"decode batch {cfg['decode_batch']} -> {batch}: the KV cache holds {capacity} tokens", flush=True)
    return batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--load-format", default="safetensors")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
    ap.add_argument("--modes", nargs="*", help="mode:budget entries, e.g. layered:8192 chunked:512")
    ap.add_argument("--num-stages", type=int)
    ap.add_argument("--prompts", type=int, nargs="*", help="prompt lengths arriving during decode (preset's if unset)")
    ap.add_argument("--decode-batch", type=int, help="decodes in the batch (preset's if unset; shrinks to what the "
                                                     "KV cache holds): two models compared at one batch")
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--pipeline-parallel-size", type=int, default=1)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--dequantize-experts", action="store_true", help="MXFP4 experts dequantized at load (GPT-OSS)")
    ap.add_argument("--out-dir", default="perf/results")
    ap.add_argument("--tag", default="")
    ap.add_argument("--structured", action="store_true", help="run perf/bench_structured.py's measurements instead")
    ap.add_argument("--async-compare", action="store_true",
                    help="run every mode with async_scheduling off and on (rows MODE and MODE+async), one after the other")
    args = ap.parse_args()
    if args.structured:
        structured_report(args)
        return
    cfg = dict(PRESETS[args.preset])
    cfg["modes"] = args.modes or cfg["modes"]
    cfg["num_stages"] = args.num_stages or cfg["num_stages"]
    cfg["prompts"] = args.prompts or cfg["prompts"]
    cfg["decode_batch"] = args.decode_batch or cfg["decode_batch"]
    max_len = max(cfg["prompts"] + [cfg["decode_context"]]) + 2048
    base = dict(model=args.model, load_format=args.load_format, max_model_len=max_len,
                tensor_parallel_size=args.tensor_parallel_size, pipeline_parallel_size=args.pipeline_parallel_size,
                enforce_eager=args.enforce_eager,
                dequantize_experts=args.dequantize_experts,
                num_stages=cfg["num_stages"])
    report: dict = {"command": "python " + " ".join(sys.argv), "preset": cfg, "modes": {}}
    modes = {entry: mode_args(entry, base) for entry in cfg["modes"]}
    if args.async_compare:
        modes = {entry + suffix: (dataclasses.replace(values, async_scheduling=bool(suffix)), fused)
                 for entry, (values, fused) in modes.items() for suffix in ("", ASYNC)}
    # One set of weights (and TP workers) for every mode; the engines borrow it. The executor is
    # built with the largest step any mode takes, so its graphs and profile cover them all.
    if args.tensor_parallel_size > 1 and not all(fused for _, fused in modes.values()):
        raise SystemExit("unfused modes switch rank 0's kernels only: run them with --tensor-parallel-size 1")
    first = max((a for a, _ in modes.values()), key=lambda a: (a.schedule_mode == "layered", a.max_num_batched_tokens))
    executor = Executor(ModelConfig.from_dir(args.model), first, max_len)
    runner = executor.runner
    try:
        cfg["decode_batch"] = report["decode_batch"] = fit_decode_batch(cfg, runner)
        report["kv_cache_tokens"] = runner.num_blocks * runner.block_size
        report["bandwidth_gbs"] = (measure_bandwidth(runner.device) or 0) / 1e9 or None
        device_name = torch.cuda.get_device_name(runner.device) if runner.device.type == "cuda" else (
            f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
        bandwidth = report["bandwidth_gbs"] * 1e9 if report["bandwidth_gbs"] else None
        print("profiling the step-time model", file=sys.stderr, flush=True)
        profile = executor.profiler.profile()
        report["profile"] = json.loads(profile.to_json())
        fused_now = True
        for entry, (engine_args, fused) in modes.items():
            print(f"== {entry}", flush=True)
            if fused != fused_now:
                runner.set_fused_ops(fused)
                fused_now = fused
            engine = LLMEngine(engine_args, executor=executor, cost=CostModel(profile))
            report["modes"][entry] = bench_mode(engine, cfg, bandwidth, seed=0)
            print(json.dumps(report["modes"][entry], indent=1), flush=True)
    finally:
        executor.shutdown()
    report["device"] = device_name
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slug = device_name.split(" (")[0].replace(" ", "-").lower()
    slug += (f"-tp{args.tensor_parallel_size}" if args.tensor_parallel_size > 1 else "")
    slug += f"-pp{args.pipeline_parallel_size}" if args.pipeline_parallel_size > 1 else ""
    slug += f"-{args.tag}" if args.tag else ""
    (out / f"offline-{slug}.json").write_text(json.dumps(report, indent=1))
    (out / f"offline-{slug}.md").write_text(markdown(report))
    print(markdown(report))


def structured_report(args: argparse.Namespace) -> None:
    from bench_structured import run  # beside this script, on sys.path when it runs

    report = run(args.model, args.load_format, batch=64, steps=30, device=None)
    slug = report["device"].replace(" ", "-").lower() + (f"-{args.tag}" if args.tag else "")
    out = Path(args.out_dir) / f"structured-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
