"""Bytes -> text for body parts and headers whose charset is missing, unknown or lying."""

from __future__ import annotations

import re

from charset_normalizer import from_bytes

# Labels mail uses that Python does not know, or knows as a narrower set than senders mean
# (browsers decode latin-1 as cp1252 and GB2312 as GB18030 for the same reason).
_ALIASES = {
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "iso-8859-8-i": "iso-8859-8",
    "iso-8859-6-i": "iso-8859-6",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "windows-874": "cp874",
    "x-mac-roman": "mac_roman",
    "macintosh": "mac_roman",
    "utf-8": "utf-8-sig",  # drops a leading BOM
    "utf8": "utf-8-sig",
}
# charset-normalizer's cost grows with input; its verdict on the first 64 KB holds for the rest.
_DETECTION_SAMPLE = 64 * 1024
# On short text charset-normalizer finds many equally good candidates (UTF-16, EBCDIC and Urdu
# code pages for "Café") and returns the first. Ties go to what mail is actually written in.
_PREFERRED = {
    name: rank
    for rank, name in enumerate(
        (
            "cp1252", "iso8859_15", "cp1250", "iso8859_2", "cp1251", "koi8_r", "koi8_u", "cp1253",
            "iso8859_7", "cp1254", "iso8859_9", "cp1257", "cp932", "shift_jis", "shift_jis_2004",
            "euc_jp", "iso2022_jp", "gb18030", "gb2312", "big5", "cp949", "euc_kr", "cp1255",
            "iso8859_8", "cp1256", "cp874", "tis_620", "mac_roman",
        )
    )
}
_TIE_CHAOS = 0.01
_TIE_COHERENCE = 0.1
_META_CHARSET_RE = re.compile(
    rb"""<meta[^>]{0,200}?charset\s*=\s*["']?([A-Za-z0-9_.:-]{1,40})""", re.IGNORECASE
)


def decode_bytes(data: bytes, declared: str | None, where: str, defects: list[str]) -> str:
    """Decode `data` as `declared`; when that is missing, unknown or wrong, detect and say so."""
    if declared:
        codec = _ALIASES.get(declared.strip().lower(), declared.strip())
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            reason = f"declared charset {declared!r} does not decode"
        except (LookupError, ValueError):  # ValueError: names with NULs or raw 8-bit bytes
            reason = f"unknown charset {declared!r}"
    elif data.isascii():
        return data.decode("ascii")
    else:
        reason = "no charset declared"
    said_utf8 = declared is not None and declared.strip().lower() in ("utf-8", "utf8")
    text, detected = detect_and_decode(data, skip_utf8=said_utf8)
    defects.append(f"{where}: {reason}; decoded as {detected}")
    return text


def unescape_surrogates(value: str, where: str, defects: list[str]) -> str:
    """Text for a str that carries raw 8-bit bytes as surrogate escapes, as the email package
    leaves undeclared header bytes; UTF-8 when they are, else detected (with a defect)."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        data = value.encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text, used = detect_and_decode(data, skip_utf8=True)
        defects.append(f"{where}: undeclared 8-bit bytes; decoded as {used}")
        return text


def detect_and_decode(data: bytes, *, skip_utf8: bool = False) -> tuple[str, str]:
    """(text, encoding used) for bytes of unknown encoding; never raises."""
    if not skip_utf8:
        # Non-ASCII bytes that form valid UTF-8 are almost never anything else; and cheap to check.
        try:
            return data.decode("utf-8-sig"), "utf-8"
        except UnicodeDecodeError:
            pass
    encoding = _detect(data[:_DETECTION_SAMPLE])
    if encoding:
        try:
            return data.decode(encoding, errors="replace"), encoding
        except LookupError:
            pass
    return data.decode("cp1252", errors="replace"), "cp1252"


def _detect(sample: bytes) -> str | None:
    matches = list(from_bytes(sample))
    if not matches:
        return None
    best = matches[0]
    tied = [
        m
        for m in matches
        if m.chaos <= best.chaos + _TIE_CHAOS and m.coherence >= best.coherence - _TIE_COHERENCE
    ]
    preferred = min(tied, key=lambda m: _PREFERRED.get(m.encoding, len(_PREFERRED)))
    return str(preferred.encoding)


def html_meta_charset(data: bytes) -> str | None:
    """The charset an HTML part declares in a <meta> tag, for parts whose MIME header omits it."""
    match = _META_CHARSET_RE.search(data, 0, 4096)
    return match.group(1).decode("ascii") if match else None
