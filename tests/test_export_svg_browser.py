"""The SVG flame graph in a real browser: clicking zooms, the search prompt highlights and counts.

Headless Chromium is driven like a user: mouse events at a frame's on-screen position and an
answer typed into the search prompt; the page's DOM is read back and compared with what the
samples say.
"""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET

import pytest
from test_export_svg import FH, NASTY, expected_display, frames_of, nasty_profile

import export_data
from cdp import CHROMIUM, chromium
from goflame.export import write_profile
from goflame.profile import Profile


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (make sysdeps)")
    with chromium() as page:
        yield page


FIND = """(() => {
  for (const g of document.querySelectorAll('#gf-frames > g')) {
    if (g.querySelector('title').textContent.split('\\n')[0] === %s) {
      g.scrollIntoView({block: 'center'});
      const r = g.querySelector('rect').getBoundingClientRect();
      return [r.x + r.width / 2, r.y + r.height / 2];
    }
  }
  return null;
})()"""

GEOMETRY = """(() => Array.from(document.querySelectorAll('#gf-frames > g')).map(g => {
  const r = g.querySelector('rect');
  return {name: g.querySelector('title').textContent.split('\\n')[0], s: +g.dataset.s, n: +g.dataset.n,
          x: +r.getAttribute('x'), w: +r.getAttribute('width'), fill: r.getAttribute('fill'),
          shown: getComputedStyle(g).display !== 'none' && r.getBoundingClientRect().width > 0};
}))()"""


def centre_of(page, selector_js: str) -> tuple[float, float]:
    xy = page.evaluate(selector_js)
    assert xy is not None
    return xy[0], xy[1]


def test_clicking_a_frame_zooms_it_to_full_width_and_reset_restores(browser, tmp_path):
    samples = export_data.random_samples(400)
    prof = Profile(export_data.meta(), tuple(samples))
    path = tmp_path / "zoom.svg"
    write_profile(prof, "svg", path, min_width=0, frame_height=FH)
    static = {f["name"]: f for f in frames_of(ET.parse(path).getroot())}
    root = static["all"]

    browser.navigate(path.as_uri())
    x, y = centre_of(browser, FIND % json.dumps("main.worker"))
    browser.click(x, y)
    after = {f["name"]: f for f in browser.evaluate(GEOMETRY)}

    worker = after["main.worker"]
    assert worker["x"] == pytest.approx(root["x"], abs=0.01)
    assert worker["w"] == pytest.approx(root["w"], abs=0.01)
    # Its ancestors span the width too, its children scale by the zoom, the rest is hidden.
    for name in ("all", "runtime.goexit", "runtime.main", "main.main"):
        assert after[name]["w"] == pytest.approx(root["w"], abs=0.01) and after[name]["shown"]
    child = after["crypto/sha256.block"]
    assert child["w"] == pytest.approx(root["w"] * static["crypto/sha256.block"]["n"] / static["main.worker"]["n"],
                                       abs=0.01)
    assert child["shown"]
    assert not after["net/http.(*conn).serve"]["shown"]
    assert not after["main.Map[...]"]["shown"]
    assert browser.evaluate("document.getElementById('gf-reset').getAttribute('visibility')") == "visible"

    x, y = centre_of(browser, "(() => { const r = document.getElementById('gf-reset').getBoundingClientRect();"
                              " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    browser.click(x, y)
    back = {f["name"]: f for f in browser.evaluate(GEOMETRY)}
    for name, f in static.items():
        assert back[name]["w"] == pytest.approx(f["w"], abs=0.01) and back[name]["shown"], name


def test_search_prompt_highlights_matches_and_shows_their_share(browser, tmp_path):
    samples = export_data.random_samples(400)
    prof = Profile(export_data.meta(mode="wall"), tuple(samples))
    path = tmp_path / "search.svg"
    write_profile(prof, "svg", path, min_width=0, frame_height=FH)
    static = {f["name"]: f for f in frames_of(ET.parse(path).getroot())}
    regex = r"^runtime\.gopark$|sha256|store|worker"  # sha256 is inside worker: counted once
    pattern = re.compile(regex)
    total = sum(s.weight for s in samples)
    # A sample counts once however many of its frames match (the state leaf is not a match here).
    hit = sum(s.weight for s in samples if any(pattern.search(f.function) for f in s.frames))
    assert 0 < hit < total

    browser.navigate(path.as_uri())
    x, y = centre_of(browser, "(() => { const r = document.getElementById('gf-search').getBoundingClientRect();"
                              " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    browser.click_answering_prompt(x, y, regex)
    matched = browser.evaluate("document.getElementById('gf-matched').textContent")
    assert matched == f"Matched: {100 * hit / total:.2f}% ({hit} of {total} samples)"

    now = {f["name"]: f for f in browser.evaluate(GEOMETRY)}
    hilite = {now[n]["fill"] for n in now if pattern.search(n)}
    assert len(hilite) == 1
    for name, f in now.items():
        if pattern.search(name):
            assert f["fill"] != static[name]["fill"], name
        else:
            assert f["fill"] == static[name]["fill"], name
    assert browser.evaluate("document.getElementById('gf-search').textContent") == "Reset Search"

    # Clicking again clears the search.
    browser.click(x, y)
    cleared = {f["name"]: f["fill"] for f in browser.evaluate(GEOMETRY)}
    assert cleared == {n: f["fill"] for n, f in static.items()}
    assert browser.evaluate("document.getElementById('gf-matched').textContent") == ""


def test_escaped_names_render_in_the_browser(browser, tmp_path):
    path = tmp_path / "nasty.svg"
    write_profile(nasty_profile(), "svg", path, frame_height=FH, width=4000)
    browser.navigate(path.as_uri())
    assert browser.evaluate("document.documentElement.localName") == "svg"
    assert browser.evaluate("document.getElementsByTagName('parsererror').length") == 0
    names = {f["name"] for f in browser.evaluate(GEOMETRY)}
    assert {expected_display(n) for n in NASTY} <= names
    assert browser.evaluate("typeof window.goflame") == "object"
