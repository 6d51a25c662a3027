"""report.html in a real browser (headless Chromium): images decode, nothing overflows at 1400 px or 800 px,
the claims table and the statement matrix are on the first two screens, and no request leaves the file.

Skipped, with the reason, only where no Chromium is installed (`.ci/run` installs Debian's `chromium`).
NORMCHECK_BROWSER_REPORT=path/to/report.html checks that report instead of the synthetic one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_report import make_output_dir
from verify import browser
from verify.report import write_report

pytestmark = pytest.mark.skipif(browser.find_chromium() is None,
                                reason="no Chromium on PATH (install Debian's `chromium`; .ci/run does)")

WIDTHS = (1400, 800)
HEIGHT = 900


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    given = os.environ.get("NORMCHECK_BROWSER_REPORT")
    if given:
        return Path(given)
    out = make_output_dir(tmp_path_factory.mktemp("browser"))
    return write_report(out)["html"]


@pytest.fixture(scope="module")
def probes(report_html) -> dict[int, dict]:
    return {width: browser.inspect_page(report_html, width, HEIGHT) for width in WIDTHS}


@pytest.mark.parametrize("width", WIDTHS)
def test_every_image_decodes(probes, width):
    images = probes[width]["images"]
    assert images, "the report shows no image"
    broken = [image["alt"] for image in images if not image["natural_width"]]
    assert not broken, f"{len(broken)} image(s) did not decode: {broken[:5]}"


@pytest.mark.parametrize("width", WIDTHS)
def test_no_element_overflows_the_page_width(probes, width):
    probe = probes[width]
    assert probe["scroll_width"] <= probe["client_width"], probe["overflowing"][:10]
    assert not probe["overflowing"], f"elements past the right edge at {width} px: {probe['overflowing'][:10]}"


def test_claims_table_and_statement_matrix_are_on_the_first_two_screens(probes):
    probe = probes[1400]
    screens = 2 * probe["viewport"][1]
    assert probe["claims_table"] is not None and probe["matrix"] is not None
    assert probe["claims_table"]["bottom"] <= screens, probe["claims_table"]
    assert probe["matrix"]["top"] < screens, probe["matrix"]


@pytest.mark.parametrize("width", WIDTHS)
def test_page_works_offline(probes, width):
    probe = probes[width]
    assert not probe["blocked"], f"requests outside the file: {probe['blocked']}"
    assert all(url.startswith(("data:", "file:")) for url in probe["resources"]), probe["resources"]


def test_offline_probe_catches_a_request_that_leaves_the_file(tmp_path):
    """The negative control: a page that fetches from the network is caught."""
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><head></head><body><img alt="x" src="http://example.invalid/x.png">'
                    "</body></html>")
    probe = browser.inspect_page(page, 800, HEIGHT)
    assert probe["blocked"] and probe["images"][0]["natural_width"] == 0


def test_a_statement_matrix_of_many_normalisers_fits_a_narrow_page(tmp_path):
    """The default report's widest table: nine normalisers whose cells read e.g. '✗ 213,640/218,624'."""
    from verify.document import render_html
    from verify.report.statements import matrix_section

    names = ["batchnorm", "groupnorm", "layernorm", "lp1", "lp2", "lpinf", "rmsnorm", "weightnorm", "centering"]
    statements = ["factC.1", "thm4.1", "thm4.1-printed", "thm4.4-per-layer", "thm4.1-reduction"]
    theory = {n: {s: {"status": "refuted" if "printed" in s else "proved"} for s in statements} for n in names}
    checks = [{"claim": s, "normaliser": n, "layer": 0, "lr": 0.1, "n_checked": 218624, "n_violations": 213640,
               "worst_ratio": 2.0, "median_ratio": 1.0, "status": theory[n][s]["status"]} for n in names for s in statements]
    page = tmp_path / "matrix.html"
    page.write_text(render_html(matrix_section({"theory": theory, "checks": checks}), tmp_path))
    for width in WIDTHS:
        probe = browser.inspect_page(page, width, HEIGHT)
        assert probe["scroll_width"] <= probe["client_width"], (width, probe["overflowing"][:5])
