"""HTML -> plain text with selectolax (lexbor): what a reader sees, line breaks and quotes kept.

Break points are marked with private-use characters, the text is read out in one call, and the
markers become newlines afterwards. Markers go into the source with literal-replacement regexes
(C speed, no per-tag Python call), placed just before a tag so they land in the same parent.
Text between table rows or cells would be moved out of the table by the HTML parser, so a row's
break goes inside its last cell. Blockquotes come out as "> " lines, so quote stripping treats
HTML replies like plain ones.
"""

from __future__ import annotations

import re

from selectolax.lexbor import LexborHTMLParser, LexborNode

# Private-use code points: they never occur in real mail text and survive lexbor untouched.
_BR = "\ue000"  # an explicit <br>: each one is a line
_BLOCK = "\ue001"  # a block boundary: one line, however many blocks open or close there
_PARA = "\ue002"  # a paragraph boundary: a blank line
_QUOTE_OPEN = "\ue003"
_QUOTE_CLOSE = "\ue004"
_KEPT_SPACE = "\ue005"  # a space inside <pre>, which whitespace collapsing must not touch
_MARKERS = _BR + _BLOCK + _PARA + _QUOTE_OPEN + _QUOTE_CLOSE

_DROPPED = "head,script,style,noscript,template,title,svg,object,iframe"
_LINE_TAGS = (
    "div", "li", "table", "center", "dt", "dd", "section", "article", "header", "footer", "address",
    "form", "fieldset", "figure", "main", "nav", "aside",
)
_PARA_TAGS = ("p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "hr", "pre")


def _before_tags(tags: tuple[str, ...], closing: bool | None) -> re.Pattern[str]:
    slash = {None: "/?", True: "/", False: ""}[closing]
    # Mail writes tags in lower case, or upper case (old Outlook); re.IGNORECASE would cost four
    # times as much. Matching the "<" itself, not a bare lookahead, lets the engine scan for it.
    names = "|".join(name for tag in tags for name in (tag, tag.upper()))
    return re.compile(rf"<(?={slash}(?:{names})[\s/>])")


# (pattern, literal text put before the matched "<"), applied in order to the source.
_SOURCE_MARKS = (
    (_before_tags(_LINE_TAGS, None), _BLOCK),
    (_before_tags(_PARA_TAGS, None), _PARA),
    (_before_tags(("br",), False), _BR),
    (_before_tags(("li",), False), "- "),
    (_before_tags(("td", "th"), None), " "),  # whitespace is not moved out of tables, unlike text
    (re.compile(r"<(?=/(?:td|th|TD|TH)>\s*</(?:tr|TR)[\s>])"), _BLOCK),  # a row's end, in its last cell
    (_before_tags(("blockquote",), False), _PARA + _QUOTE_OPEN),
    (_before_tags(("blockquote",), True), _QUOTE_CLOSE + _PARA),
)

_INVISIBLE_RE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u034f\u00ad]")  # preheader padding
_BLOCK_RUN_RE = re.compile(f"{_BLOCK}{{2,}}")
_QUOTE_BEFORE_NEWLINES_RE = re.compile(rf"([{_QUOTE_OPEN}{_QUOTE_CLOSE}]+)(\n+)")
_LINE_EDGES_RE = re.compile(r" *\n *")
_BLANK_RUNS_RE = re.compile(r"\n{3,}")


def html_to_text(html: str) -> str:
    """Readable text of an HTML document or fragment; "" when there is none."""
    for pattern, marker in _SOURCE_MARKS:
        html = pattern.sub(marker + "<", html)
    tree = LexborHTMLParser(html)
    root = tree.body
    if root is None:
        return ""
    for node in root.css(_DROPPED):
        node.decompose()
    _keep_preformatted(root)
    text = _INVISIBLE_RE.sub("", root.text(deep=True, separator=""))
    # str.split() knows every Unicode space (nbsp included) and none of the private-use markers.
    return _markers_to_newlines(" ".join(text.split()))


def _keep_preformatted(root: LexborNode) -> None:
    """<pre> text keeps its line breaks and indentation through whitespace collapsing."""
    for node in root.css("pre"):
        text = node.text(deep=True).expandtabs(4)
        node.replace_with(_PARA + text.replace("\n", _BR).replace(" ", _KEPT_SPACE) + _PARA)


def _markers_to_newlines(text: str) -> str:
    """A run of markers becomes min(2, <br>s + 1 if a block boundary is in it) newlines, or a blank
    line at a paragraph or quote boundary; quote markers move to the start of the next line."""
    for marker in _MARKERS:
        text = text.replace(" " + marker, marker).replace(marker + " ", marker)
    text = _BLOCK_RUN_RE.sub(_BLOCK, text)
    text = text.replace(_BLOCK, "\n").replace(_BR, "\n").replace(_PARA, "\n\n")
    quoted = _QUOTE_OPEN in text
    if quoted:
        text = text.replace(_QUOTE_OPEN, "\n\n" + _QUOTE_OPEN).replace(_QUOTE_CLOSE, "\n\n" + _QUOTE_CLOSE)
        text = _QUOTE_BEFORE_NEWLINES_RE.sub(r"\2\1", text)
    text = _BLANK_RUNS_RE.sub("\n\n", _LINE_EDGES_RE.sub("\n", text)).strip()
    if quoted:
        text = _quote_lines(text)
    return text.replace(_KEPT_SPACE, " ")


def _quote_lines(text: str) -> str:
    """Prefix lines inside blockquotes with "> " per level, dropping the quote markers."""
    lines: list[str] = []
    depth = 0
    for raw in text.split("\n"):
        line = raw
        while line and line[0] in (_QUOTE_OPEN, _QUOTE_CLOSE):
            depth = max(0, depth + (1 if line[0] == _QUOTE_OPEN else -1))
            line = line[1:]
        line = line.replace(_QUOTE_OPEN, "").replace(_QUOTE_CLOSE, "").strip()
        if depth and line:
            line = ">" * depth + " " + line
        if line or (lines and lines[-1]):
            lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)
