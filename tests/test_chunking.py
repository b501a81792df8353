from __future__ import annotations

import hashlib

import pytest
from tokenizers import Tokenizer

from pipeline.embeddings.chunking import MAX_BODY_CHARS, MAX_CHUNKS, chunk_text, load_tokenizer
from pipeline.embeddings.local import MAX_TOKENS, MODEL_NAME, bundled_model_dir
from pipeline.records import Chunk

MODEL = MODEL_NAME
PREFIX = "Subject: Quarterly plan\nFrom: Alice <alice@example.com>\n"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer(bundled_model_dir())


def body(paragraphs: int) -> str:
    sentences = [
        f"Paragraph {p}, sentence {s}: the budget review for team {p * 7 + s} moves to next week."
        for p in range(paragraphs)
        for s in range(4)
    ]
    return "\n\n".join(" ".join(sentences[i : i + 4]) for i in range(0, len(sentences), 4))


def chunks_of(text: str, tokenizer: Tokenizer, **kwargs: int) -> list[Chunk]:
    return chunk_text("Quarterly plan", "Alice <alice@example.com>", text, tokenizer, model=MODEL, **kwargs)


def model_tokens(tokenizer: Tokenizer, text: str) -> int:
    return len(tokenizer.encode(text).ids)  # with [CLS] and [SEP], as the model reads it


def test_load_tokenizer_does_not_truncate_or_pad(tokenizer: Tokenizer) -> None:
    long = "word " * 1000
    assert len(tokenizer.encode(long).ids) == 1002
    assert len(tokenizer.encode("word").ids) == 3


def test_every_chunk_has_the_prefix(tokenizer: Tokenizer) -> None:
    chunks = chunks_of(body(12), tokenizer)
    assert len(chunks) > 1
    assert all(c.text.startswith(PREFIX) for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))


@pytest.mark.parametrize(("max_tokens", "overlap"), [(MAX_TOKENS, 32), (128, 16), (64, 0), (256, 0)])
def test_token_budget_is_respected(tokenizer: Tokenizer, max_tokens: int, overlap: int) -> None:
    chunks = chunks_of(body(15), tokenizer, max_tokens=max_tokens, overlap_tokens=overlap)
    assert len(chunks) > 1
    assert all(model_tokens(tokenizer, c.text) <= max_tokens for c in chunks)
    # and the chunks are full enough to be worth their embedding
    assert all(model_tokens(tokenizer, c.text) > max_tokens // 2 for c in chunks[:-1])


def test_budget_holds_for_unbreakable_text(tokenizer: Tokenizer) -> None:
    text = "https://example.com/" + "a1b2c3d4" * 400 + " end"
    chunks = chunks_of(text, tokenizer)
    assert all(model_tokens(tokenizer, c.text) <= MAX_TOKENS for c in chunks)
    assert chunks[-1].text.endswith("end")


def test_chunk_bodies_are_substrings_and_cover_the_text(tokenizer: Tokenizer) -> None:
    text = body(15) + "\n\nÜnïcödé 😀 日本語のテキスト and a last line"
    chunks = chunks_of(text, tokenizer)
    parts = [c.text[len(PREFIX) :] for c in chunks]
    assert all(part and part in text for part in parts)
    assert text.startswith(parts[0])
    assert text.endswith(parts[-1])
    # consecutive chunks overlap or touch: nothing in between is lost
    position = 0
    for part in parts:
        start = text.index(part, max(0, position - len(part)))
        assert start <= position
        position = start + len(part)


def test_splits_prefer_sentence_and_line_ends(tokenizer: Tokenizer) -> None:
    chunks = chunks_of(body(15), tokenizer)
    assert all(c.text.rstrip().endswith((".", "?", "!")) for c in chunks)


def test_overlap_repeats_the_tail(tokenizer: Tokenizer) -> None:
    chunks = chunks_of(body(15), tokenizer, overlap_tokens=32)
    first, second = (c.text[len(PREFIX) :] for c in chunks[:2])
    assert second.split()[0] in first[len(first) // 2 :]


def test_hashes_are_deterministic_and_keyed_by_model(tokenizer: Tokenizer) -> None:
    text = body(6)
    a, b = chunks_of(text, tokenizer), chunks_of(text, tokenizer)
    assert [c.content_hash for c in a] == [c.content_hash for c in b]
    assert a[0].content_hash == hashlib.sha256(f"{MODEL}\0{a[0].text}".encode()).hexdigest()
    other = chunk_text("Quarterly plan", "Alice <alice@example.com>", text, tokenizer, model="other-model")
    assert [c.text for c in other] == [c.text for c in a]
    assert not {c.content_hash for c in other} & {c.content_hash for c in a}
    assert len({c.content_hash for c in a}) == len(a)


@pytest.mark.parametrize("text", ["", "   \n\n  "])
def test_empty_body_gives_the_prefix_alone(tokenizer: Tokenizer, text: str) -> None:
    chunks = chunks_of(text, tokenizer)
    assert len(chunks) == 1
    assert chunks[0].text == PREFIX
    assert chunks[0].index == 0


def test_long_body_is_capped(tokenizer: Tokenizer) -> None:
    text = body(400)
    assert len(text) > 5 * MAX_BODY_CHARS
    chunks = chunks_of(text, tokenizer)
    assert len(chunks) == MAX_CHUNKS
    assert all(c.text[len(PREFIX) :] in text[:MAX_BODY_CHARS] for c in chunks)


def test_header_fields_are_single_line_and_bounded(tokenizer: Tokenizer) -> None:
    chunks = chunk_text(
        "A\nvery  long\tsubject " * 100, "Bob\n<bob@example.com>", "Hello there.", tokenizer, model=MODEL
    )
    assert len(chunks) == 1
    subject_line, from_line, text = chunks[0].text.split("\n")
    assert subject_line.startswith("Subject: A very long subject A very")
    assert from_line == "From: Bob <bob@example.com>"
    assert text == "Hello there."
    assert model_tokens(tokenizer, chunks[0].text) < 100


def test_impossible_budget_is_rejected(tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError):
        chunks_of("text", tokenizer, max_tokens=10)
    with pytest.raises(ValueError):
        chunks_of("text", tokenizer, max_tokens=64, overlap_tokens=60)
