"""Split a message into model-sized chunks, each keyed by a content hash.

Every chunk is "Subject: …\\nFrom: …\\n" followed by a slice of the body, so a chunk found by search
says where it came from and the vector carries the subject's meaning. Token counts come from the
embedding model's own tokenizer, so a chunk never exceeds what the model reads (256 tokens for
MiniLM, [CLS] and [SEP] included): nothing is silently truncated at embedding time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from pipeline.records import Chunk

# Bounds on the work one message can cause: tokenizing is cheap, embedding is not (~18 full chunks
# per second on 2 cores), so a 2 MB log pasted into a mail must not cost minutes.
MAX_BODY_CHARS = 20_000
MAX_CHUNKS = 16
# Header fields are cut to these many tokens so the body keeps most of every chunk's budget.
MAX_SUBJECT_TOKENS = 48
MAX_SENDER_TOKENS = 24

_SENTENCE_ENDS = frozenset(".!?。！？")


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The model's `tokenizer.json` with truncation and padding off, so offsets cover all the text."""
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    # MiniLM's file ships truncation at 128 and fixed padding: both would hide text from the counts.
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def chunk_text(
    subject: str,
    sender: str,
    text: str,
    tokenizer: Tokenizer,
    *,
    model: str,
    max_tokens: int = 256,
    overlap_tokens: int = 32,
) -> list[Chunk]:
    """Chunks of at most `max_tokens` tokens (prefix and special tokens included).

    The body is split on token boundaries, preferably at a line or sentence end in the second half
    of the window, else at a word boundary; consecutive chunks share about `overlap_tokens` tokens
    so a sentence cut in two is whole in one of them. The body part of every chunk is a substring
    of `text`. The body is capped at MAX_BODY_CHARS and the result at MAX_CHUNKS; an empty body
    gives one chunk holding the prefix alone.
    """
    prefix = _prefix(subject, sender, tokenizer)
    specials = tokenizer.num_special_tokens_to_add(False)
    budget = max_tokens - specials - _count(tokenizer, prefix)
    if budget <= 0 or not 0 <= overlap_tokens < budget:
        raise ValueError(
            f"max_tokens={max_tokens} leaves {budget} body tokens; overlap_tokens={overlap_tokens} must be below that"
        )
    body = text[:MAX_BODY_CHARS]
    encoding = _Tokens.of(tokenizer, body)
    if not encoding.offsets:
        return [_chunk(0, prefix, model)]
    total = len(encoding.offsets)
    chunks: list[Chunk] = []
    start = 0
    while len(chunks) < MAX_CHUNKS:
        end = _cut_point(encoding, body, start, min(start + budget, total), budget)
        piece, end = _fit(prefix, body, encoding, start, end, tokenizer, max_tokens)
        chunks.append(_chunk(len(chunks), piece, model))
        if end >= total:
            break
        start = _next_start(encoding, body, start, end, overlap_tokens)
    return chunks


def content_hash(model: str, text: str) -> str:
    """The key that lets the embed stage skip text it has already embedded with the same model."""
    return hashlib.sha256(f"{model}\0{text}".encode()).hexdigest()


def _chunk(index: int, text: str, model: str) -> Chunk:
    return Chunk(index=index, text=text, content_hash=content_hash(model, text))


def _prefix(subject: str, sender: str, tokenizer: Tokenizer) -> str:
    subject = _cut_tokens(" ".join(subject.split()), tokenizer, MAX_SUBJECT_TOKENS)
    sender = _cut_tokens(" ".join(sender.split()), tokenizer, MAX_SENDER_TOKENS)
    # The trailing newline keeps token counts additive: prefix tokens + body tokens = chunk tokens.
    return f"Subject: {subject}\nFrom: {sender}\n"


def _cut_tokens(value: str, tokenizer: Tokenizer, limit: int) -> str:
    offsets = tokenizer.encode(value, add_special_tokens=False).offsets
    if len(offsets) <= limit:
        return value
    return value[: offsets[limit - 1][1]]


def _count(tokenizer: Tokenizer, text: str, *, specials: bool = False) -> int:
    return len(tokenizer.encode(text, add_special_tokens=specials).ids)


@dataclass(frozen=True, slots=True)
class _Tokens:
    """The body's token offsets and word ids, copied once: `Encoding` rebuilds its lists per access."""

    offsets: list[tuple[int, int]]
    word_ids: list[int | None]

    @classmethod
    def of(cls, tokenizer: Tokenizer, body: str) -> _Tokens:
        encoding = tokenizer.encode(body, add_special_tokens=False)
        return cls(offsets=list(encoding.offsets), word_ids=list(encoding.word_ids))


def _cut_point(encoding: _Tokens, body: str, start: int, limit: int, budget: int) -> int:
    """The exclusive end token: a line/sentence end in the window's second half, else a word end."""
    if limit >= len(encoding.offsets):
        return limit
    for end in range(limit, start + budget // 2, -1):
        if _is_sentence_break(encoding, body, end):
            return end
    for end in range(limit, start, -1):
        if _is_word_break(encoding, end):
            return end
    return limit  # one "word" longer than the budget (a URL, base64): cut it between tokens


def _next_start(encoding: _Tokens, body: str, start: int, end: int, overlap: int) -> int:
    """Where the next chunk starts: `overlap` tokens back, moved to a sentence or word start."""
    first = max(end - overlap, start + 1)
    candidates = range(first, end)
    for test in (lambda i: _is_sentence_break(encoding, body, i), lambda i: _is_word_break(encoding, i)):
        found = next((i for i in candidates if test(i)), None)
        if found is not None:
            return found
    return end


def _is_word_break(encoding: _Tokens, i: int) -> bool:
    """True when a word starts at token i (not a "##" continuation of the previous one)."""
    if i <= 0 or i >= len(encoding.offsets):
        return True
    return bool(encoding.word_ids[i] != encoding.word_ids[i - 1])


def _is_sentence_break(encoding: _Tokens, body: str, i: int) -> bool:
    """True when the text between tokens i-1 and i ends a line, or token i-1 ends a sentence."""
    if i <= 0 or i >= len(encoding.offsets):
        return True
    gap = body[encoding.offsets[i - 1][1] : encoding.offsets[i][0]]
    if "\n" in gap:
        return True
    previous = body[encoding.offsets[i - 1][0] : encoding.offsets[i - 1][1]]
    return bool(gap) and previous in _SENTENCE_ENDS


def _fit(
    prefix: str, body: str, encoding: _Tokens, start: int, end: int, tokenizer: Tokenizer, max_tokens: int
) -> tuple[str, int]:
    """The chunk text, re-counted as a whole: a slice that starts or ends inside a word can
    tokenize to more pieces than it had in context, so drop tokens until it fits."""
    offsets = encoding.offsets
    while True:
        piece = prefix + body[offsets[start][0] : offsets[end - 1][1]]
        if end - start <= 1 or _count(tokenizer, piece, specials=True) <= max_tokens:
            return piece, end
        end -= 1
