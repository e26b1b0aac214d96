"""Structured outputs through the engine: at temperature 1.0 the random-weights demo model's
output always parses and validates, in both schedule modes, under preemption and with n > 1;
bad grammars end only their own request."""
from __future__ import annotations

import json
import re

import pytest
from engine_utils import make_engine

from laminar import SamplingParams
from laminar.structured_output import (
    _JSON_STRING_CHAR,
    _LOOSE_STRING_CHAR,
    CHAIN_MAX_CHARS,
    json_schema_grammar,
    structural_tag_grammar,
)

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "tag": {"type": "string", "minLength": 2, "maxLength": 5},
        "count": {"type": "integer", "minimum": -50, "maximum": 5000},
        "ok": {"type": "boolean"},
        "kind": {"enum": ["alpha", "beta", "gamma\"q"]},
    },
    "required": ["name", "tag", "count", "ok", "kind"],
    "additionalProperties": False,
}
REGEX = r"[a-z]{2,6}-\d{2,4}(\.[A-Z]+)?"
CHOICES = ["yes", "no thanks", 'say "hi"\\']
EBNF = 'root ::= "(" item ("," item)* ")"\nitem ::= [0-9]+ | "x"'


def check_schema(text: str) -> None:
    """SCHEMA's constraints, checked by hand (json.loads rejects raw control characters)."""
    value = json.loads(text)
    assert list(value) == list(SCHEMA["properties"]), value  # order kept, nothing extra
    assert isinstance(value["name"], str) and len(value["name"]) <= 12
    assert isinstance(value["tag"], str) and 2 <= len(value["tag"]) <= 5
    assert isinstance(value["count"], int) and -50 <= value["count"] <= 5000
    assert isinstance(value["ok"], bool)
    assert value["kind"] in SCHEMA["properties"]["kind"]["enum"]


CASES = {
    "json": ({"json": SCHEMA}, check_schema),
    "json_string": ({"json": json.dumps(SCHEMA)}, check_schema),
    "json_object": ({"json_object": True}, lambda t: isinstance(json.loads(t), dict) or pytest.fail(t)),
    "regex": ({"regex": REGEX}, lambda t: re.fullmatch(REGEX, t) or pytest.fail(t)),
    "choice": ({"choice": CHOICES}, lambda t: t in CHOICES or pytest.fail(t)),
    "grammar": ({"grammar": EBNF}, lambda t: re.fullmatch(r"\((\d+|x)(,(\d+|x))*\)", t) or pytest.fail(t)),
}
PROMPT = "The scheduler runs the sampler"


def run(engine, requests: dict[str, SamplingParams]) -> dict[tuple[str, int], dict]:
    """Outputs per (request, sample): text, finish reason; errors under (request, -1)."""
    for rid, params in requests.items():
        engine.add_request(rid, PROMPT, params)
    out: dict[tuple[str, int], dict] = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            if o.error is not None:
                out[(o.request_id, -1)] = {"error": o.error}
                continue
            d = out.setdefault((o.request_id, o.index), {"text": "", "reason": None})
            d["text"] += o.new_text
            d["reason"] = o.finish_reason
    return out


def constrained(case: str, seed: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=400, temperature=1.0, seed=seed, structured_outputs=CASES[case][0], **kw)


@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_outputs_validate_at_temperature_one(demo_model, mode):
    engine = make_engine(demo_model, schedule_mode=mode, block_size=16)
    requests = {f"{case}-{seed}": constrained(case, seed) for case in CASES for seed in range(2)}
    requests["plain"] = SamplingParams(max_tokens=5, seed=1)  # unconstrained rows share the batch
    out = run(engine, requests)
    for (rid, _), d in out.items():
        if rid == "plain":
            continue
        assert d["reason"] == "stop", (rid, d)  # the grammar ended, not max_tokens
        CASES[rid.rsplit("-", 1)[0]][1](d["text"])
    assert engine.blocks.num_free == engine.blocks.num_blocks


def test_n_samples_and_preemption_keep_matchers_in_step(demo_model):
    """A KV cache too small for the batch preempts (recompute keeps tokens, so each matcher stays
    in step with its sequence); forked samples get fresh matchers."""
    engine = make_engine(demo_model, block_size=4, num_kv_blocks=20, max_num_seqs=8, max_model_len=80)
    requests = {f"r{i}": constrained("json", i, n=2) for i in range(2)}
    out = run(engine, requests)
    assert engine.stats.num_preemptions > 0
    assert sorted(out) == [(f"r{i}", j) for i in range(2) for j in range(2)]
    for d in out.values():
        assert d["reason"] == "stop", d
        check_schema(d["text"])


@pytest.mark.parametrize("spec, field", [
    ({"json": "{not json"}, "structured_outputs.json"),
    ({"json": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}, "structured_outputs.json"),
    ({"regex": "(("}, "structured_outputs.regex"),
    ({"grammar": "root ::= missing_rule"}, "structured_outputs.grammar"),
    ({"structural_tag": {"nope": 1}}, "structured_outputs.structural_tag"),
])
def test_bad_grammar_fails_its_request_only(demo_model, spec, field):
    engine = make_engine(demo_model, block_size=16)
    out = run(engine, {"bad": SamplingParams(max_tokens=4, structured_outputs=spec),
                       "good": constrained("regex", 0)})
    assert out[("bad", -1)]["error"].startswith(field + ": ")
    assert re.fullmatch(REGEX, out[("good", 0)]["text"])
    assert not engine.seqs and not engine.compiling


def test_max_length_strings_exclude_control_characters():
    """xgrammar 0.2.8 lets raw control characters into strings with length bounds (invalid JSON);
    the schema's grammar is rewritten so that they are refused like in every other JSON string."""
    import xgrammar as xgr

    schema = json.dumps({"type": "string", "maxLength": 4})
    raw = str(xgr.Grammar.from_json_schema(schema, any_whitespace=False))
    assert _LOOSE_STRING_CHAR in raw  # still xgrammar's rule: the workaround is needed
    info = xgr.TokenizerInfo([chr(c) for c in range(32, 127)] + ["\x01", "\t"])
    for grammar, accepts in ((xgr.Grammar.from_ebnf(raw), True), (json_schema_grammar(schema), False)):
        matcher = xgr.GrammarMatcher(xgr.GrammarCompiler(info).compile_grammar(grammar))
        assert matcher.accept_string('"a')
        assert matcher.accept_string("\t") is accepts


def test_structural_tag_json_is_compact_and_json_strings():
    """JSON inside a structural tag (forced tool calls) gets the schemas' treatment: no free
    whitespace between tokens, no raw control characters in length-bounded strings."""
    import xgrammar as xgr

    schema = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 4}}, "required": ["a"]}
    tag = json.dumps({"type": "structural_tag", "format": {"type": "tag", "begin": "<c>", "end": "</c>",
                                                          "content": {"type": "json_schema", "json_schema": schema}}})
    info = xgr.TokenizerInfo([chr(c) for c in range(32, 127)] + ["\n", "\t"])
    raw = xgr.Grammar.from_structural_tag(tag)
    for grammar, accepts in ((raw, True), (structural_tag_grammar(tag), False)):
        def matcher():
            return xgr.GrammarMatcher(xgr.GrammarCompiler(info).compile_grammar(grammar))
        m = matcher()
        assert m.accept_string("<c>{")
        assert m.accept_string("\n") is accepts  # whitespace inside the object
        m = matcher()
        assert m.accept_string('<c>{"a":"x')
        assert m.accept_string("\t") is accepts  # a raw tab inside the bounded string
    m = xgr.GrammarMatcher(xgr.GrammarCompiler(info).compile_grammar(structural_tag_grammar(tag)))
    assert m.accept_string('<c>{"a":"xy"}</c>') and m.is_completed()


def test_abort_while_compiling_and_structural_tag(demo_model):
    engine = make_engine(demo_model, block_size=16)
    tag = {"type": "structural_tag", "format": {"type": "const_string", "value": "done"}}
    engine.add_request("gone", PROMPT, constrained("json", 0))
    assert engine.abort("gone") and not engine.seqs and not engine.compiling
    out = run(engine, {"tag": SamplingParams(max_tokens=20, structured_outputs={"structural_tag": tag})})
    assert out[("tag", 0)] == {"text": "done", "reason": "stop"}


@pytest.mark.parametrize("mode", ["layered", "chunked"])
def test_slo_policy(demo_model, mode):
    """The SLO policy's partial layer spans and sized chunks (a fixed profile), n > 1 included."""
    from test_slo_policy import slo_engine

    engine = slo_engine(demo_model, 18, mode, block_size=16)
    out = run(engine, {"choice": constrained("choice", 2, n=2), "grammar": constrained("grammar", 3)})
    assert sorted(out) == [("choice", 0), ("choice", 1), ("grammar", 0)]
    for (rid, _), d in out.items():
        assert d["reason"] == "stop"
        CASES[rid][1](d["text"])


@pytest.mark.parametrize("threads", [1, 3])
def test_mask_of_many_rows_equals_each_row_filled_alone(monkeypatch, threads):
    """GrammarMask fills several constrained rows at once (xgrammar's batch matcher, in turn or on
    threads): each row's bits are those its matcher gives alone, rows between them are left out."""
    import torch
    import xgrammar as xgr

    from laminar import structured_output
    from laminar.structured_output import BitmaskBuffer, GrammarMask, GrammarState

    monkeypatch.setattr(structured_output, "FILL_THREADS", threads)

    info = xgr.TokenizerInfo([chr(c) for c in range(32, 127)] + ["</s>"], stop_token_ids=[95])
    compiled = xgr.GrammarCompiler(info).compile_grammar(json_schema_grammar(json.dumps(SCHEMA)))
    states = [GrammarState(compiled) for _ in range(3)]
    for state, text in zip(states, ['{"name": "ab', '{"name": "abc", "tag": "x', "{"]):
        assert state.matcher.accept_string(text)
    rows = [states[0], None, states[1], states[2], None]
    mask = GrammarMask(rows, len(info.decoded_vocab), BitmaskBuffer(pinned=False))
    assert mask.rows == [0, 2, 3]
    for i, state in zip(mask.rows, states):
        alone = xgr.allocate_token_bitmask(1, len(info.decoded_vocab))
        state.matcher.fill_next_token_bitmask(alone, 0)
        assert torch.equal(mask.bitmask[i], alone[0]), i


def test_bounded_strings_are_rule_chains_with_xgrammars_masks():
    """Strings with length bounds become chains of rules (one per number of characters left; no
    counted repetition, the slow case of a bitmask fill) up to CHAIN_MAX_CHARS, and the masks are
    xgrammar's own at every step of random walks inside a JSON object, with tokens that run past
    a closing quote among them."""
    import random

    import torch
    import xgrammar as xgr

    bounded = {"type": "string", "maxLength": 3}
    schema = {**SCHEMA, "properties": {**SCHEMA["properties"], "list": {"type": "array", "items": bounded},
                                       "least": {"type": "string", "minLength": 3},
                                       "long": {"type": "string", "maxLength": CHAIN_MAX_CHARS + 1}}}
    schema["required"] = list(schema["properties"])
    text = json.dumps(schema)
    chained = str(json_schema_grammar(text))
    assert "{2, 5}" not in chained and "{0, 12}" not in chained and "{3, -1}" not in chained
    assert f"{{0, {CHAIN_MAX_CHARS + 1}}}" in chained  # kept: a chain that long costs compile time
    raw = str(xgr.Grammar.from_json_schema(text, any_whitespace=False, strict_mode=True))
    vocab = [chr(c) for c in range(32, 127)] + ["ab", "abcd", "abcdefgh", '"}', '", ', '"]', '"x', 'x"', "</s>"]
    info = xgr.TokenizerInfo(vocab, stop_token_ids=[len(vocab) - 1])
    compiler = xgr.GrammarCompiler(info)
    grammars = [compiler.compile_grammar(xgr.Grammar.from_ebnf(ebnf))
                for ebnf in (raw.replace(_LOOSE_STRING_CHAR, _JSON_STRING_CHAR), chained)]
    rng = random.Random(0)
    for _ in range(6):
        matchers = [xgr.GrammarMatcher(g) for g in grammars]
        for _ in range(120):
            masks = []
            for matcher in matchers:
                mask = xgr.allocate_token_bitmask(1, len(vocab))
                matcher.fill_next_token_bitmask(mask)
                masks.append(mask)
            assert torch.equal(*masks)
            allowed = [t for t in range(len(vocab)) if masks[0][0, t // 32] >> (t % 32) & 1]
            token = rng.choice(allowed)
            if token == len(vocab) - 1:
                break
            assert all(m.accept_token(token) for m in matchers)
