"""Structured outputs with xgrammar: grammars compiled off the engine thread, one matcher per
sequence, and one batched token-bitmask op on the logits of the constrained rows per step.

Compiling a JSON schema or a grammar takes from microseconds to seconds, so it never runs on the
engine thread: `GrammarCompiler.submit` hands it to a small thread pool and returns a future; the
engine keeps the request out of the scheduler until the future is done, and keeps stepping the
others. Compiled grammars (and compile errors) are cached by kind and text.

JSON schemas are compiled without free whitespace (`any_whitespace=False`: one space after ":" and ","):
with free whitespace a weak model can fill max_tokens with blanks. xgrammar 0.2.8's rule for
strings with minLength/maxLength lets raw control characters through, which is not JSON; the
schema's grammar is therefore printed as EBNF, that character class is replaced by the JSON one
(xgrammar's own basic string class), and the text is compiled as a grammar.

That rule is also what makes a token bitmask slow: a counted repetition (`chars{0, 8}`) shares one
state for every count, so inside such a string most of the vocabulary is decided token by token at
fill time, for every row in such a state and every step. A bounded string is therefore rewritten as
a chain of rules, one per number of characters left, each ending with the closing quote and
xgrammar's lookahead for JSON strings, so that its compile-time token masks decide almost every
token (`_chain_bounded_strings`). The language is the same; as with xgrammar's own strings, a
token that runs past the closing quote must fit that lookahead (`"}` after a property's value, but
not `"</tag>` after a string at the end of a structural tag's JSON, which takes `"` then `</tag>`).

A matcher accepts every sampled token of its sequence, and only those: preemption recomputes KV
but keeps the tokens, so the matcher never needs to roll back. Stop tokens (EOS) are allowed only
where the grammar may end; the sequence finishes when the matcher terminates.

The mask is applied on a GPU by xgrammar's torch_native backend (a few torch ops), not by its
Triton kernel, the default: Triton compiles that kernel again for each new specialization of its
integer arguments (one constrained row, a multiple of 16 rows, any other count), and each compile
stalled every running stream: on an H100 (perf/results/gpu-h100-2026-12-07-s5) 20 new schemas
arriving gave a 407 ms gap between two tokens of a running stream (84 decode steps), the same
schemas again 21 ms. The torch ops read and write ~4 bytes a row's vocabulary entry 4 times:
about 0.1 ms for 64 rows of a 152k vocabulary.

xgrammar is imported on first use, so an engine without structured requests runs without it.
"""
from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    import xgrammar as xgr

COMPILE_THREADS = 2
CACHE_ENTRIES = 512
# xgrammar 0.2.8's character class for strings with length bounds, and JSON's (no control characters).
_LOOSE_STRING_CHAR = '[^\\"\\\\\\r\\n]'
_JSON_STRING_CHAR = '[^\\0-\\x1f\\"\\\\\\r\\n]'
_FREE_WHITESPACE = "[ \\n\\r\\t]*"  # what xgrammar's JSON rules allow between tokens
# xgrammar 0.2.8's printed rule of a string with length bounds: name ::= (("\"" chars{min, max} "\""))
# (max -1: no maxLength), and the lookahead of its own JSON strings (what may follow one).
_BOUNDED_STRING = re.compile(r'^(\w+) ::= \(\("\\"" (\w+)\{(\d+), (-?\d+)\} "\\""\)\)$', re.MULTILINE)
_STRING_LOOKAHEAD = "(=([ \\n\\r\\t]* [,}\\]:]))"
CHAIN_MAX_CHARS = 256  # longer bounds keep xgrammar's repetition: one rule a character costs compile time
_LOG_PREFIX = re.compile(r"^(\[[\d:]+\] \S+:\d+: )?(Check failed: \(.*?\) is false: )?")


@dataclass(frozen=True)
class GrammarKey:
    """What a compiled grammar is cached by: its kind and its canonical text."""

    kind: str
    text: str

    @classmethod
    def of(cls, spec: dict[str, Any]) -> GrammarKey:
        kind, value = next(iter(spec.items()))
        # Key order is kept: a schema's property order is the output's.
        return cls(kind, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


@functools.cache
def _xgrammar():  # noqa: ANN202  (the module)
    import xgrammar

    return xgrammar


def usable_cores() -> int:
    """The cores this process may run on (xgrammar's "auto" counts every core of the host)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


FILL_THREADS = max(1, usable_cores() // 2)


@functools.cache
def _batch_matcher(share: int) -> xgr.BatchGrammarMatcher:
    """The batch matcher of one share of a step's rows (one a share, so no two threads share one).
    It fills its rows in turn: one thread, so no pool of its own (xgrammar's pool starts and joins
    its threads within every fill call)."""
    return _xgrammar().BatchGrammarMatcher(1)


@functools.cache
def _fill_pool() -> ThreadPoolExecutor:
    """The threads that fill shares of a step's rows beside the engine thread, started once."""
    return ThreadPoolExecutor(max(1, FILL_THREADS - 1), thread_name_prefix="laminar-mask")


def fill_bitmask(matchers: list[xgr.GrammarMatcher], bitmask: Tensor, rows: list[int]) -> None:
    """Fills row rows[i] of `bitmask` from matchers[i], in n = min(FILL_THREADS, len(rows)) shares
    of every n-th row: the calling thread fills one, _fill_pool the others (xgrammar's fill releases
    the GIL)."""
    shares = min(FILL_THREADS, len(rows))
    futures = [_fill_pool().submit(_batch_matcher(k).batch_fill_next_token_bitmask, matchers[k::shares], bitmask,
                                   rows[k::shares]) for k in range(1, shares)]
    _batch_matcher(0).batch_fill_next_token_bitmask(matchers[::shares], bitmask, rows[::shares])
    for future in futures:
        future.result()


def json_schema_grammar(schema: str) -> xgr.Grammar:
    """A JSON schema's grammar, compact, with JSON's string characters and bounded strings as rule
    chains (see the module docstring)."""
    ebnf = str(_xgrammar().Grammar.from_json_schema(schema, any_whitespace=False, strict_mode=True))
    return _xgrammar().Grammar.from_ebnf(_chain_bounded_strings(ebnf.replace(_LOOSE_STRING_CHAR, _JSON_STRING_CHAR)))


def structural_tag_grammar(text: str) -> xgr.Grammar:
    """A structural tag's grammar with its JSON contents made as json_schema_grammar makes them:
    no free whitespace (a weak model would otherwise fill a forced tool call's arguments with
    newlines up to max_tokens), JSON's string characters and bounded strings as rule chains."""
    ebnf = str(_xgrammar().Grammar.from_structural_tag(text))
    ebnf = ebnf.replace(_LOOSE_STRING_CHAR, _JSON_STRING_CHAR).replace(_FREE_WHITESPACE, "")
    return _xgrammar().Grammar.from_ebnf(_chain_bounded_strings(ebnf))


def _chain_bounded_strings(ebnf: str) -> str:
    """Each string rule with length bounds (up to CHAIN_MAX_CHARS) as a chain of rules: `name_len_k`
    is the rest of the string with at most k characters left (or, without maxLength, at least k),
    closing quote included, so every rule of the chain is a state of its own."""
    chains: list[str] = []

    def chain(match: re.Match[str]) -> str:
        name, char, low, high = match[1], match[2], int(match[3]), int(match[4])
        if max(low, high) > CHAIN_MAX_CHARS or f"{name}_len_" in ebnf:
            return match[0]
        top = high if high >= 0 else low
        for k in range(top + 1):
            more = f"{name}_len_{k - 1 if k else 0}"  # len_0 without maxLength: any number more
            alternatives = ['("\\"")'] if k <= top - low else []  # the string may end here
            if k or high < 0:
                alternatives.append(f"({char} {more})")
            chains.append(f"{name}_len_{k} ::= ({' | '.join(alternatives)}) {_STRING_LOOKAHEAD}")
        return f'{name} ::= (("\\"" {name}_len_{top}))'

    ebnf = _BOUNDED_STRING.sub(chain, ebnf)
    return "\n".join([ebnf, *chains])


def _choice_grammar(choices: list[str]) -> xgr.Grammar:
    alternatives = " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)
    return _xgrammar().Grammar.from_ebnf(f"root ::= {alternatives}")


_BUILDERS: dict[str, Callable[[str], xgr.Grammar]] = {
    "json": json_schema_grammar,
    "json_object": lambda _: json_schema_grammar('{"type": "object"}'),
    "regex": lambda text: _xgrammar().Grammar.from_regex(text),
    "choice": lambda text: _choice_grammar(json.loads(text)),
    "grammar": lambda text: _xgrammar().Grammar.from_ebnf(text),
    "structural_tag": structural_tag_grammar,
}


class GrammarCompiler:
    """Compiles grammars for one tokenizer on a thread pool, cached by GrammarKey.

    The tokenizer's xgrammar view (its decoded vocabulary) is built once, on the pool too. The
    vocabulary is the model's logits width: ids past the tokenizer's vocabulary (padding rows of
    the embedding) are never allowed.
    """

    def __init__(self, model_dir: str | Path, vocab_size: int, stop_token_ids: list[int]) -> None:
        self._model_dir, self._vocab_size, self._stop_token_ids = str(model_dir), vocab_size, stop_token_ids
        self._pool = ThreadPoolExecutor(COMPILE_THREADS, thread_name_prefix="laminar-grammar")
        self._lock = threading.Lock()
        self._cache: OrderedDict[GrammarKey, Future[xgr.CompiledGrammar]] = OrderedDict()
        self._compiler: Future[xgr.GrammarCompiler] = self._pool.submit(self._make_compiler)

    def _make_compiler(self) -> xgr.GrammarCompiler:
        from transformers import AutoTokenizer  # only when a model serves structured outputs

        tokenizer = AutoTokenizer.from_pretrained(self._model_dir)
        info = _xgrammar().TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=self._vocab_size, stop_token_ids=self._stop_token_ids)
        return _xgrammar().GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def submit(self, spec: dict[str, Any]) -> Future[xgr.CompiledGrammar]:
        """The compiled grammar of a (validated) structured_outputs object, as a future that
        raises ValueError naming the field when the schema, regex or grammar is invalid."""
        key = GrammarKey.of(spec)
        with self._lock:
            future = self._cache.get(key)
            if future is None:
                future = self._cache[key] = self._pool.submit(self._compile, key)
                if len(self._cache) > CACHE_ENTRIES:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
        return future

    def _compile(self, key: GrammarKey) -> xgr.CompiledGrammar:
        compiler = self._compiler.result()
        try:
            return compiler.compile_grammar(_BUILDERS[key.kind](key.text))
        except Exception as e:  # xgrammar raises RuntimeError, ValueError or its own types
            raise ValueError(f"structured_outputs.{key.kind}: {_message(e)}") from None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _message(error: Exception) -> str:
    """xgrammar's message without its C++ log prefix ("[time] file.cc:line: Check failed: ...")."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    return _LOG_PREFIX.sub("", lines[0]).strip()


class GrammarState:
    """One sequence's matcher over its output tokens."""

    def __init__(self, compiled: xgr.CompiledGrammar) -> None:
        self.compiled = compiled
        self.matcher = _xgrammar().GrammarMatcher(compiled)

    def fork(self) -> GrammarState:
        """A fresh matcher for another sample of the same request (it has no tokens yet)."""
        return GrammarState(self.compiled)

    def accept(self, token: int) -> None:
        if not self.matcher.accept_token(token):
            raise RuntimeError(f"the grammar matcher rejected token {token}, which its bitmask allowed")

    @property
    def terminated(self) -> bool:
        return self.matcher.is_terminated()


class BitmaskBuffer:
    """The host buffer token bitmasks are filled in, kept across steps (pinned for a GPU, so the
    copy to the device is asynchronous; a step reuses it only after the last step's sampled tokens
    came back to the host, which is after its copy)."""

    def __init__(self, pinned: bool) -> None:
        self.pinned = pinned
        self.buffer: Tensor | None = None

    def take(self, rows: int, vocab_size: int) -> Tensor:
        shape = _xgrammar().get_bitmask_shape(rows, vocab_size)
        if self.buffer is None or self.buffer.shape[0] < rows or self.buffer.shape[1] != shape[1]:
            self.buffer = torch.empty((max(rows, 64), shape[1]), dtype=torch.int32, pin_memory=self.pinned)
        return self.buffer[:rows]


class GrammarMask:
    """The token bitmask of one step's constrained rows.

    Filled on the host while the device still runs the step's forward (fill right after the
    forward is launched), into the reused BitmaskBuffer, then applied to the logits on their device
    in one op. Rows are filled in parallel (`fill_bitmask`). One row's fill varies widely with its
    grammar's state; a string with length bounds in xgrammar's own form was the slow case (see the
    module docstring).
    """

    def __init__(self, grammars: list[GrammarState | None], vocab_size: int, buffer: BitmaskBuffer) -> None:
        self.rows = [i for i, g in enumerate(grammars) if g is not None]
        self.bitmask: Tensor | None = None
        if not self.rows:
            return
        self.bitmask = buffer.take(len(grammars), vocab_size)
        fill_bitmask([grammars[i].matcher for i in self.rows], self.bitmask, self.rows)

    def apply(self, logits: Tensor) -> None:
        """Disallowed tokens of the constrained rows -> -inf, in place."""
        if self.bitmask is None:
            return
        bitmask = self.bitmask.to(logits.device, non_blocking=True)
        indices = None if len(self.rows) == logits.shape[0] else self.rows
        backend = "torch_native" if logits.is_cuda else "auto"
        _xgrammar().apply_token_bitmask_inplace(logits, bitmask, indices=indices, backend=backend)
