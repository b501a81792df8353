"""How often `strip_reply` finds exactly the new text of a reply, on the reply-bodies corpus.

    python -m bench.eval_replies [PATH] [--json] [--diff]

PATH defaults to `../shared/corpora/reply-bodies` next to the repository: 90 plain-text bodies
(crisp-oss/email-reply-parser's fixtures, MIT). The folder holds bodies only, no expected outputs;
its README defines the expectation as "what a careful reader sees as the new text of each body".
So the expectations live here, in `EXPECTED`, one entry per body, as the lines of the body (1-based,
after CRLF -> LF) that make up that new text:

    "*"        the whole body is new text
    ""         nothing is new text
    "1-5"      lines 1 to 5;  "1,8-34" line 1, then lines 8 to 34 (inline replies keep gaps)

A body counts as exact when `strip_reply(body)[0]` equals the labelled lines after the same
normalization on both sides: right-strip every line, collapse runs of blank lines into one, drop
leading and trailing blank lines. Nothing else is forgiven.

How the bodies were labelled (one reader's judgement, applied the same way to all 90):
- Old text goes: `>` quotes, the attribution introducing them ("On … wrote:", "Le … a écrit :",
  "30.09.2017, 18.30, "X" <x@y>:"…), Outlook header blocks and everything under them, "Original
  message" / "Forwarded message" separators and what follows, and the rule lines just above them.
- Inline replies keep the new lines between quotes; the attribution above the first quote goes.
- Signatures go: after "-- " or "--", after an em-dash rule or a mailing-list "__" footer rule,
  and client taglines ("Sent from my iPhone", "Get Outlook for iOS", "Gesendet von …") together
  with the unquoted original that mobile clients put under them. A sentence that merely mentions
  sending ("Sent from my desk, is much easier…") stays.
- Valedictions and names not set off by a delimiter ("Best regards,\\nJohn", "Regards,\\n\\nJohn
  Doe\\nCEO @ Acme !", "-Abhishek Kona") stay: they are part of what the sender typed.
- Prose that only looks like markers stays ("On the other hand", "On Thursday:", "wrote:" in a
  sentence or URL, "From:" mid-line, timestamps, markdown "----", code blocks).
- `email_with_date_headers.txt` and `email_with_from_headers.txt` are templates upstream: their
  "[DATE]" / "[FROM]" lines stand for a quote header. They are labelled by that intent ("Thank you
  very much." and nothing), which no general rule can see; both are expected misses.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.normalize.quotes import strip_reply

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PATH = REPO.parent / "shared" / "corpora" / "reply-bodies"

_FUSCE = "1-5"  # the shared first paragraph of crisp's fixtures, followed by a quote of some kind

EXPECTED: dict[str, str] = {
    "correct_sig.txt": "1",
    "email_1.txt": "1-7",
    "email_2.txt": "1,8-34",
    "email_3.txt": "1-5",
    "email_4.txt": "1",
    "email_5.txt": "*",
    "email_6.txt": "1-3",
    "email_7.txt": _FUSCE,
    "email_8.txt": _FUSCE,
    "email_9.txt": _FUSCE,
    "email_10.txt": _FUSCE,
    "email_11.txt": _FUSCE,
    "email_12.txt": _FUSCE,
    "email_13.txt": _FUSCE,
    "email_14.txt": _FUSCE,
    "email_15.txt": _FUSCE,
    "email_16.txt": _FUSCE,
    "email_17.txt": _FUSCE,
    "email_18.txt": _FUSCE,
    "email_19.txt": "1",
    "email_20.txt": "1",
    "email_21.txt": "*",
    "email_22.txt": _FUSCE,
    "email_23.txt": _FUSCE,
    "email_24.txt": _FUSCE,
    "email_25.txt": _FUSCE,
    "email_26.txt": _FUSCE,
    "email_2_1.txt": "1",
    "email_blackberry.txt": "1",
    "email_bullets.txt": "1-9",
    "email_custom_quote_header.txt": "1",
    "email_customer_quote_header_2.txt": "1",
    "email_customer_quote_header_3.txt": "1-3",
    "email_danish_dash_separator.txt": _FUSCE,
    "email_emoji.txt": "1",
    "email_en_multiline_2.txt": _FUSCE,
    "email_finnish.txt": _FUSCE,
    "email_fr_multiline.txt": _FUSCE,
    "email_french_2.txt": _FUSCE,
    "email_french_dash_separator.txt": _FUSCE,
    "email_german.txt": _FUSCE,
    "email_german_2.txt": _FUSCE,
    "email_german_3.txt": _FUSCE,
    "email_german_outlook.txt": _FUSCE,
    "email_gmail_split_line_from.txt": _FUSCE,
    "email_ios_outlook.txt": _FUSCE,
    "email_ios_outlook_fr.txt": _FUSCE,
    "email_iphone.txt": "1",
    "email_italian.txt": _FUSCE,
    "email_msn.txt": _FUSCE,
    "email_multi_word_sent_from_my_mobile_device.txt": "1",
    "email_norwegian_gmail.txt": _FUSCE,
    "email_not_a_signature.txt": "*",
    "email_not_a_signature_2.txt": "*",
    "email_one_is_not_on.txt": "1-5",
    "email_original_message.txt": _FUSCE,
    "email_original_message_2.txt": _FUSCE,
    "email_outlook_split_line_from.txt": _FUSCE,
    "email_portuguese.txt": _FUSCE,
    "email_reply_header.txt": "1-11",
    "email_russian.txt": _FUSCE,
    "email_sent_from.txt": "1",
    "email_sent_from_my_not_signature.txt": "*",
    "email_thread.txt": "1",
    "email_tricky_1_on_false_positive.txt": "*",
    "email_tricky_2_url_with_wrote.txt": "*",
    "email_tricky_3_code_block.txt": "*",
    "email_tricky_4_from_in_body.txt": "*",
    "email_tricky_5_mixed_languages.txt": _FUSCE,
    "email_tricky_6_regards_in_sentence.txt": "*",
    "email_tricky_7_multiple_dashes.txt": "*",
    "email_tricky_8_sent_from_in_content.txt": "*",
    "email_tricky_9_nested_quotes.txt": "1",
    "email_tricky_10_special_chars_in_name.txt": _FUSCE,
    "email_tricky_11_double_signature.txt": "1-4",
    "email_tricky_12_no_space_after_header.txt": _FUSCE,
    "email_tricky_13_timestamp_variations.txt": "*",
    "email_tricky_14_long_quote_header.txt": _FUSCE,
    "email_tricky_15_original_message_variations.txt": _FUSCE,
    "email_tricky_16_unicode_signatures.txt": "1-4",
    "email_tricky_17_forward_header.txt": "1",
    "email_tricky_18_inline_reply.txt": "4-5,8-9,12",
    "email_tricky_19_quote_without_header.txt": "1-2,7-8,12",
    "email_tricky_20_html_entities.txt": "1-3",
    "email_unquoted_reply.txt": "1",
    "email_with_date_headers.txt": "1",
    "email_with_from_headers.txt": "",
    "email_with_regards.txt": "*",
    "email_zoho.txt": "1-2",
    "sig_no_empty_line.txt": "1",
}


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str
    status: str  # "exact", "miss" or "missing" (labelled but absent from the folder)
    expected: str
    got: str


def select_lines(body: str, spec: str) -> str:
    """The lines of `body` that `spec` names (see the module docstring for the syntax)."""
    lines = body.split("\n")
    if spec == "*":
        return body
    picked: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        first, _, last = part.partition("-")
        picked.extend(lines[int(first) - 1 : int(last or first)])
    return "\n".join(picked)


def normalize(text: str) -> str:
    out: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = line.rstrip()
        if line or (out and out[-1]):
            out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)


def evaluate(folder: Path) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for name, spec in EXPECTED.items():
        path = folder / name
        if not path.is_file():
            outcomes.append(Outcome(name, "missing", "", ""))
            continue
        body = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        expected = normalize(select_lines(body, spec))
        got = normalize(strip_reply(body)[0])
        outcomes.append(Outcome(name, "exact" if got == expected else "miss", expected, got))
    return outcomes


def unlabelled(folder: Path) -> list[str]:
    """Bodies in the folder that `EXPECTED` does not know: the corpus changed under us."""
    return sorted(p.name for p in folder.glob("*.txt") if p.name not in EXPECTED)


def summary(outcomes: list[Outcome]) -> dict[str, int | float]:
    scored = [o for o in outcomes if o.status != "missing"]
    exact = sum(o.status == "exact" for o in scored)
    return {
        "bodies": len(scored),
        "exact": exact,
        "missing": len(outcomes) - len(scored),
        "exact_rate": round(exact / len(scored), 4) if scored else 0.0,
    }


def print_table(outcomes: list[Outcome], extra: list[str], show_diff: bool) -> None:
    width = max(len(o.name) for o in outcomes)
    print(f"{'body':<{width}}  result  expected/got lines")
    for o in outcomes:
        counts = f"{o.expected.count(chr(10)) + bool(o.expected)}/{o.got.count(chr(10)) + bool(o.got)}"
        print(f"{o.name:<{width}}  {o.status:<6}  {counts}")
        if show_diff and o.status == "miss":
            diff = difflib.unified_diff(
                o.expected.split("\n"), o.got.split("\n"), "expected", "got", lineterm="", n=1
            )
            print("\n".join("      " + d for d in diff))
    totals = summary(outcomes)
    print(
        f"\nexact: {totals['exact']}/{totals['bodies']} ({100 * float(totals['exact_rate']):.1f}%)"
        + (f", missing from folder: {totals['missing']}" if totals["missing"] else "")
    )
    if extra:
        print("not labelled, not scored: " + ", ".join(extra))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH, help="the reply-bodies folder")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--diff", action="store_true", help="show expected vs got for each miss")
    args = parser.parse_args(argv)
    if not args.path.is_dir():
        print(f"no such folder: {args.path}", file=sys.stderr)
        return 2
    outcomes = evaluate(args.path)
    extra = unlabelled(args.path)
    if args.json:
        report: dict[str, object] = {"path": str(args.path), **summary(outcomes), "unlabelled": extra}
        report["results"] = [asdict(o) for o in outcomes]
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print_table(outcomes, extra, args.diff)
    return 0


if __name__ == "__main__":
    sys.exit(main())
