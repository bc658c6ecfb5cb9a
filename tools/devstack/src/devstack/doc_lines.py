"""Line links from the docs into the code (`[`Inbox.process`](../libs/.../inbox.py#L367)`):
whether each still points at the definition its text names, and a refresher that moves
them to where the definitions are now.

    python -m devstack.doc_lines          # rewrite docs/*.md's stale line links in place

`tests/docs/test_links.py` checks every link with `not_defined_at`; when code moves, the
test names the stale links and this command fixes them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]

# What a line link's text names: `name` or `Outer.name` (in backticks or not; `()` allowed).
SYMBOL = re.compile(r"`?([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)(?:\(\))?`?")
# A link into a Python file at a line: [text](path.py#L12) (or #L12-L20).
_LINE_LINK = re.compile(r"\[([^\]]+)\]\(([^)#\s]+\.py)#L\d+(?:-L\d+)?\)")


def _defines(line: str, name: str) -> bool:
    word = re.escape(name)
    return bool(re.match(rf"\s*((async\s+)?def|class)\s+{word}\b|\s*{word}\s*(:|=(?!=))",
                         line))


def enclosing(lines: list[str], number: int) -> str | None:
    """The class or function that line `number` is in (None: the module's top level)."""
    indent = len(lines[number - 1]) - len(lines[number - 1].lstrip())
    for line in reversed(lines[: number - 1]):
        stripped = line.lstrip()
        if stripped and len(line) - len(stripped) < indent:
            scope = re.match(r"(?:async\s+)?(?:def|class)\s+(\w+)", stripped)
            if scope:
                return scope[1]
            if not stripped.startswith(("@", "#", ")")):
                indent = len(line) - len(stripped)  # a block (if, with, …) inside a scope
    return None


def not_defined_at(source: Path, number: int, text: str) -> str | None:
    """Why line `number` of `source` does not define what `text` names (None: it does).

    The line must define `name`: `def name`, `async def name`, `class name`, `name =` or
    `name:`. `Outer`, when given, is the class or function the line is in, or the module.
    """
    symbol = SYMBOL.fullmatch(text.strip())
    if symbol is None:
        return f"a line link's text must name the symbol defined there, not {text!r}"
    *outer, name = symbol[1].split(".")
    lines = source.read_text(encoding="utf-8").splitlines()
    if not 1 <= number <= len(lines):
        return f"{source.name} has {len(lines)} lines, no line {number}"
    line = lines[number - 1]
    if not _defines(line, name):
        return f"line {number} of {source.name} does not define {name}: {line.strip()!r:.80}"
    scope = enclosing(lines, number)
    if outer and outer[-1] not in (source.stem, scope):
        return (f"line {number} of {source.name} defines {name} in {scope or 'the module'}, "
                f"not in {outer[-1]}")
    return None


def definition_line(source: Path, text: str) -> int | None:
    """The first line of `source` that defines what `text` names (a def or class first)."""
    lines = source.read_text(encoding="utf-8").splitlines()
    found = [n for n in range(1, len(lines) + 1) if not_defined_at(source, n, text) is None]
    defs = [n for n in found if re.match(r"\s*((async\s+)?def|class)\s", lines[n - 1])]
    return (defs or found or [None])[0]


def refresh(doc: Path) -> list[str]:
    """Move `doc`'s line links to the lines that define their symbols now; what it could
    not place (the symbol is gone) is returned, one line per link."""
    unplaced: list[str] = []

    def moved(link: re.Match[str]) -> str:
        text, path = link[1], link[2]
        number = definition_line((doc.parent / path).resolve(), text)
        if number is None:
            unplaced.append(f"{doc.name}: {link[0]}: {path} defines no {text}")
            return link[0]
        return f"[{text}]({path}#L{number})"

    text = doc.read_text(encoding="utf-8")
    new = _LINE_LINK.sub(moved, text)
    if new != text:
        doc.write_text(new, encoding="utf-8")
    return unplaced


def main() -> int:
    unplaced = [line for doc in sorted((ROOT / "docs").glob("**/*.md")) for line in refresh(doc)]
    for line in unplaced:
        print(f"doc_lines: {line}", file=sys.stderr)
    return 1 if unplaced else 0


if __name__ == "__main__":
    raise SystemExit(main())
