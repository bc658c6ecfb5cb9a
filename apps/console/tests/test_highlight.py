"""The dead letter page's JSON highlighting (a pure function)."""

import pytest

from console.pages import highlight_json

pytestmark = pytest.mark.unit


def test_keys_strings_numbers_and_literals_get_their_spans():
    html = str(highlight_json('{"amount": -12.5, "email": "a@b.c", "ok": true, "x": null}'))
    assert '<span class="key">&#34;amount&#34;</span>:' in html
    assert '<span class="number">-12.5</span>' in html
    assert '<span class="string">&#34;a@b.c&#34;</span>' in html
    assert '<span class="literal">true</span>' in html
    assert '<span class="literal">null</span>' in html


def test_markup_in_a_body_is_escaped():
    html = str(highlight_json('{"name": "<script>alert(1)</script>"} <b>'))
    assert "<script>" not in html and "<b>" not in html
    assert "&lt;script&gt;" in html and "&lt;b&gt;" in html
