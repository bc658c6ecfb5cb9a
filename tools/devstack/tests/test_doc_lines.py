"""`python -m devstack.doc_lines`: a line link whose symbol moved is moved with it; one whose
symbol is gone is named, and left as it was."""

from __future__ import annotations

import pytest

from devstack.doc_lines import refresh

pytestmark = pytest.mark.unit


def test_a_line_link_follows_its_symbol_and_a_vanished_one_is_named(tmp_path):
    (tmp_path / "inbox.py").write_text(
        "LIMIT = 3\n\n\nclass Inbox:\n    async def process(self):\n        pass\n")
    doc = tmp_path / "tour.md"
    doc.write_text("[`Inbox.process`](inbox.py#L2) and [`LIMIT`](inbox.py#L9) "
                   "and [`Inbox.prepare`](inbox.py#L4)\n")

    unplaced = refresh(doc)

    assert doc.read_text() == ("[`Inbox.process`](inbox.py#L5) and [`LIMIT`](inbox.py#L1) "
                               "and [`Inbox.prepare`](inbox.py#L4)\n")
    assert unplaced == ["tour.md: [`Inbox.prepare`](inbox.py#L4): inbox.py defines no "
                        "`Inbox.prepare`"]
