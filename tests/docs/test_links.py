"""The docs hold together: every relative link in README.md, docs/ and deploy/README.md points
at a file in the repository, every `#anchor` at a heading of its target (GitHub's slugs),
every `#L<n>` into a Python file at the line that defines the symbol the link's text names
(line links go stale when code moves: this says which, and `python -m devstack.doc_lines`
moves them), and the README stays the short front door (at most 300 lines)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from devstack.doc_lines import not_defined_at

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 300

# [text](target) or [text](target "title"); images too. Not inside code.
_LINK = re.compile(
    r"!?\[((?:[^\]\[]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_LINE = re.compile(r"L(\d+)(?:-L\d+)?")


def doc_files() -> list[Path]:
    docs = sorted((ROOT / "docs").glob("**/*.md"))
    return [ROOT / "README.md", *docs, ROOT / "deploy" / "README.md"]


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks, inline code stripped of brackets and parentheses:
    a link written in code is no link, and a link's text in code (a symbol) is kept."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", lambda code: re.sub(r"[][()]", "", code[0]), line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation other than
    `-` and `_` dropped, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    result = set()
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    return result


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with the relative links of one Markdown file, one line per link."""
    problems = []
    for line in _prose(path.read_text(encoding="utf-8")):
        for text, target in _LINK.findall(line):
            if _SCHEME.match(target):
                continue  # http:, https:, mailto: — not ours to check
            file_part, _, fragment = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.is_relative_to(root):
                problems.append(f"{target}: points outside the repository")
            elif not dest.exists():
                problems.append(f"{target}: no such file")
            elif (
                fragment
                and dest.suffix == ".md"
                and fragment not in anchors(dest.read_text(encoding="utf-8"))
            ):
                problems.append(f"{target}: no heading #{fragment} in {dest.name}")
            elif dest.suffix == ".py" and (line_number := _LINE.fullmatch(fragment)):
                problem = not_defined_at(dest, int(line_number[1]), text)
                if problem:
                    problems.append(f"[{text}]({target}): {problem}")
    return problems


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file_and_heading(path):
    assert path.exists(), path
    problems = broken_links(path)
    assert problems == [], "\n".join(
        [*problems, "(line links that moved: `python -m devstack.doc_lines` moves them)"])


def test_the_readme_is_at_most_300_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move depth to docs/"


def test_slugs_follow_github_rules():
    assert slug("Exactly-once effects: outbox + inbox + sequence") == (
        "exactly-once-effects-outbox--inbox--sequence"
    )
    assert slug("Three RabbitMQ nodes: the `cluster` profile") == (
        "three-rabbitmq-nodes-the-cluster-profile"
    )
    assert slug("What each guarantee costs (CPU per payment, run of `56887c2`)") == (
        "what-each-guarantee-costs-cpu-per-payment-run-of-56887c2"
    )
    assert anchors("# Logs\n## Logs\n```\n# not a heading\n```\n") == {"logs", "logs-1"}


def test_the_checker_reports_a_missing_file_a_missing_heading_and_an_escape(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Present heading\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md#present-heading) [web](https://example.invalid/x)\n"
        "[gone](docs/missing.md) [bad anchor](docs/a.md#absent) [out](../elsewhere.md)\n"
        "[self](#nowhere) `[in code](docs/missing.md)`\n"
        "```\n[in a fence](docs/missing.md)\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page, root=tmp_path) == [
        "docs/missing.md: no such file",
        "docs/a.md#absent: no heading #absent in a.md",
        "../elsewhere.md: points outside the repository",
        "#nowhere: no heading #nowhere in README.md",
    ]


def test_a_line_link_must_point_at_the_definition_of_the_symbol_its_text_names(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "inbox.py").write_text(
        "LIMIT = 3\n"                                 # 1
        "\n"                                          # 2
        "class Inbox:\n"                              # 3
        "    async def process(self, event):\n"       # 4
        "        return decide(event)\n"              # 5
        "\n"                                          # 6
        "def decide(event):\n"                        # 7
        "    return None\n",                          # 8
        encoding="utf-8",
    )
    page = tmp_path / "walk.md"
    page.write_text(
        "[`Inbox.process`](pkg/inbox.py#L4) [decide()](pkg/inbox.py#L7) [LIMIT](pkg/inbox.py#L1)"
        " [`inbox.decide`](pkg/inbox.py#L7) [`Inbox`](pkg/inbox.py#L3-L5)\n"
        "[`Inbox.process`](pkg/inbox.py#L5) [`Other.process`](pkg/inbox.py#L4)"
        " [`Inbox.decide`](pkg/inbox.py#L7) [line 4](pkg/inbox.py#L4)"
        " [`decide`](pkg/inbox.py#L80)\n",
        encoding="utf-8",
    )
    assert broken_links(page, root=tmp_path) == [
        "[`Inbox.process`](pkg/inbox.py#L5): line 5 of inbox.py does not define process: "
        "'return decide(event)'",
        "[`Other.process`](pkg/inbox.py#L4): line 4 of inbox.py defines process in Inbox, "
        "not in Other",
        "[`Inbox.decide`](pkg/inbox.py#L7): line 7 of inbox.py defines decide in the module, "
        "not in Inbox",
        "[line 4](pkg/inbox.py#L4): a line link's text must name the symbol defined there, "
        "not 'line 4'",
        "[`decide`](pkg/inbox.py#L80): inbox.py has 8 lines, no line 80",
    ]
