"""Tokenizer wrapper and IncrementalDetokenizer, on the demo checkpoint's byte-level BPE."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from laminar.demo import write_demo_checkpoint
from laminar.tokenizer import IncrementalDetokenizer, Tokenizer, load_tokenizer

PIECES = [
    "The scheduler", " admits", " requests", " café", " naïve", " 你好世界", " 🚀🔥",
    " 数据", "\n", " tokens", " per", " second.", " émoji 😀", " κόσμε", " ok",
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    model_dir = write_demo_checkpoint(tmp_path_factory.mktemp("demo") / "model", trained=False)
    return load_tokenizer(model_dir)


def _random_text(rng: random.Random, n: int = 30) -> str:
    return "".join(rng.choice(PIECES) for _ in range(n))


def _stream(detok: IncrementalDetokenizer, ids: list[int], rng: random.Random) -> tuple[list[str], bool]:
    """Feeds ids in random chunk sizes (1-4 tokens, like multi-token steps)."""
    out, i = [], 0
    while i < len(ids):
        n = rng.randint(1, 4)
        piece, stopped = detok.step(ids[i : i + n])
        out.append(piece)
        i += n
        if stopped:
            return out, True
    return out, False


def test_tokenizer_basics(tok: Tokenizer) -> None:
    assert tok.vocab_size == 2048
    assert tok.eos_token_ids == {tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")}
    text = "Hello serving world, café 你好 🚀"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    chat = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert chat[0] == tok.token_to_id("<|im_start|>")
    assert tok.decode(chat) == "user\nhi"
    assert tok.decode(chat, skip_special_tokens=False) == "<|im_start|>user\nhi<|im_end|>"


def test_streaming_matches_full_decode_without_partial_chars(tok: Tokenizer) -> None:
    rng = random.Random(0)
    for _ in range(50):
        prompt = tok.encode(_random_text(rng, 5))
        ids = tok.encode(_random_text(rng))
        detok = IncrementalDetokenizer(tok, prompt, stop=[], skip_special_tokens=True)
        pieces, stopped = _stream(detok, ids, rng)
        assert not stopped
        assert all("\ufffd" not in p for p in pieces)
        assert "".join(pieces) + detok.finish() == tok.decode(ids) == detok.text


def test_token_by_token_never_emits_replacement(tok: Tokenizer) -> None:
    ids = tok.encode("A 🚀 launch, 你好, and ünïcödé 😀!")
    detok = IncrementalDetokenizer(tok, [], stop=[], skip_special_tokens=True)
    pieces = [detok.step([i])[0] for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + detok.finish() == "A 🚀 launch, 你好, and ünïcödé 😀!"


def test_random_token_ids_concatenate_to_full_decode(tok: Tokenizer) -> None:
    rng = random.Random(1)
    for _ in range(50):
        ids = [rng.randrange(3, tok.vocab_size) for _ in range(40)]
        detok = IncrementalDetokenizer(tok, [], stop=[], skip_special_tokens=True)
        pieces, _ = _stream(detok, ids, rng)
        assert "".join(pieces) + detok.finish() == tok.decode(ids)


def test_prompt_gives_context_to_first_token(tok: Tokenizer) -> None:
    prompt = tok.encode("Serving")
    ids = tok.encode(" systems are")
    detok = IncrementalDetokenizer(tok, prompt, stop=[], skip_special_tokens=True)
    assert detok.step(ids[:1])[0] + detok.step(ids[1:])[0] + detok.finish() == " systems are"


@pytest.mark.parametrize("stop", [["STOP"], ["x", "STOP"], ["🚀!"], ["nope", "STOP now"]])
def test_stop_strings_cut_and_never_emitted(tok: Tokenizer, stop: list[str]) -> None:
    rng = random.Random(2)
    for _ in range(30):
        before = _random_text(rng, 10).replace("x", "")
        text = before + stop[-1] + " after the stop" + _random_text(rng, 5)
        ids = tok.encode(text)
        detok = IncrementalDetokenizer(tok, [], stop=stop, skip_special_tokens=True)
        pieces, stopped = _stream(detok, ids, rng)
        assert stopped and detok.stopped
        assert "".join(pieces) == before == detok.text
        assert detok.finish() == ""
        assert detok.step(ids[:1]) == ("", True)


def test_stop_split_across_single_tokens(tok: Tokenizer) -> None:
    ids = [tid for ch in "abc END def" for tid in tok.encode(ch)]
    detok = IncrementalDetokenizer(tok, [], stop=["END"], skip_special_tokens=True)
    pieces = []
    for tid in ids:
        piece, stopped = detok.step([tid])
        pieces.append(piece)
        assert "E" not in "".join(pieces)
        if stopped:
            break
    assert stopped and "".join(pieces) == "abc "


def test_earliest_stop_wins_within_one_step(tok: Tokenizer) -> None:
    detok = IncrementalDetokenizer(tok, [], stop=["bb", "aaaa"], skip_special_tokens=True)
    piece, stopped = detok.step(tok.encode("xx aaaa yy bb zz"))
    assert stopped and piece == "xx " and detok.text == "xx "


def test_finish_flushes_held_back_text(tok: Tokenizer) -> None:
    detok = IncrementalDetokenizer(tok, [], stop=["longest stop"], skip_special_tokens=True)
    piece, stopped = detok.step(tok.encode("short"))
    assert not stopped and piece == ""  # all within the 11-character hold-back window
    assert detok.finish() == "short"
    assert detok.text == "short"


def test_special_tokens_skipped_or_kept(tok: Tokenizer) -> None:
    ids = tok.encode("done<|im_end|>")
    skip = IncrementalDetokenizer(tok, [], stop=[], skip_special_tokens=True)
    keep = IncrementalDetokenizer(tok, [], stop=[], skip_special_tokens=False)
    assert "".join(skip.step([i])[0] for i in ids) + skip.finish() == "done"
    assert "".join(keep.step([i])[0] for i in ids) + keep.finish() == "done<|im_end|>"


def test_work_per_step_is_bounded(tok: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step decodes a small window, not the whole output."""
    windows: list[int] = []
    original = Tokenizer.decode

    def spy(self: Tokenizer, ids: list[int], skip_special_tokens: bool = True) -> str:
        windows.append(len(ids))
        return original(self, ids, skip_special_tokens)

    monkeypatch.setattr(Tokenizer, "decode", spy)
    ids = tok.encode(_random_text(random.Random(3), 200))
    assert len(ids) > 500
    detok = IncrementalDetokenizer(tok, tok.encode("a long prompt " * 50), stop=["END"],
                                   skip_special_tokens=True)
    for i in ids:
        detok.step([i])
    assert max(windows) <= 16


def test_load_tokenizer_without_generation_config(tmp_path: Path, tok: Tokenizer) -> None:
    model_dir = write_demo_checkpoint(tmp_path / "m", trained=False)
    (model_dir / "generation_config.json").unlink()
    assert load_tokenizer(model_dir).eos_token_ids == {tok.token_to_id("<|im_end|>")}


def test_invalid_utf8_is_released_as_replacement(tok: Tokenizer) -> None:
    """A model emitting stray continuation bytes must not stall the stream forever."""
    stray = tok.encode("é")[-1]  # the 0xA9 continuation byte on its own
    ids = [stray] * 30 + tok.encode(" ok")
    detok = IncrementalDetokenizer(tok, [], stop=[], skip_special_tokens=True)
    pieces = [detok.step([i])[0] for i in ids]
    assert "".join(pieces[:30]).count("\ufffd") >= 20
    assert "".join(pieces) + detok.finish() == tok.decode(ids)
