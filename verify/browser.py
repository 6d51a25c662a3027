"""The report as a reader's browser shows it: headless Chromium, offline, at a given window size.

    python -m verify screenshot --out DIR      DIR/report-first-viewport.png (1400 x 900, the first screen)

`inspect_page` loads a copy of `report.html` with a probe script and a Content-Security-Policy that lets
nothing leave the file (images only from data: URIs, no fonts, no fetches), and returns what the probe
measured after the page loaded: every image's natural width, the elements that reach past the window's
right edge, where the claims table and the statement matrix are, and every request the policy blocked.
Chromium's `--dump-dom` prints the page after its load event; no WebDriver is needed.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")
FIRST_VIEWPORT = (1400, 900)
SCREENSHOT_NAME = "report-first-viewport.png"

# Nothing may be fetched: images and styles are inline (data: URIs), scripts only this probe.
_POLICY = ("default-src 'none'; img-src data:; style-src 'unsafe-inline' data:; font-src 'none'; "
           "script-src 'unsafe-inline'; connect-src 'none'")

_PROBE = """
<script>
const blocked = [];
document.addEventListener('securitypolicyviolation', e => blocked.push(e.blockedURI || e.violatedDirective));
window.addEventListener('load', () => setTimeout(() => {
  const width = document.documentElement.clientWidth;
  const visible = el => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const describe = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
      (el.className && typeof el.className === 'string' ? '.' + el.className.split(' ').join('.') : '') +
      ' "' + (el.textContent || '').trim().slice(0, 60) + '"';
  const overflowing = [...document.body.querySelectorAll('*')].filter(visible)
      .filter(el => el.getBoundingClientRect().right > width + 0.5)
      .map(el => describe(el) + ' right=' + Math.round(el.getBoundingClientRect().right));
  const top = sel => { const el = document.querySelector(sel);
      if (!el) return null; const r = el.getBoundingClientRect();
      return {top: r.top + window.scrollY, bottom: r.bottom + window.scrollY}; };
  const resources = performance.getEntriesByType('resource').map(e => e.name);
  const probe = {viewport: [window.innerWidth, window.innerHeight], client_width: width,
      scroll_width: document.documentElement.scrollWidth,
      images: [...document.images].map(img => ({alt: img.alt.slice(0, 80), natural_width: img.naturalWidth,
                                               complete: img.complete})),
      overflowing: overflowing, claims_table: top('table.claims'), matrix: top('table.matrix'),
      blocked: blocked, resources: resources};
  const out = document.createElement('pre'); out.id = 'browser-probe';
  out.textContent = JSON.stringify(probe); document.body.appendChild(out);
}, 50));
</script>
"""


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) binary on PATH, or None."""
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


def _run(binary: str, args: list[str], url: str, timeout: float) -> str:
    command = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--hide-scrollbars", *args, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{binary} exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def inspect_page(html_path: Path, width: int, height: int = 900, timeout: float = 120.0) -> dict:
    """What the probe measured on `html_path` in a `width` x `height` window (see the module docstring)."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError(f"no Chromium on PATH (looked for {', '.join(CANDIDATES)}); install Debian's "
                                "`chromium` package")
    page = Path(html_path).read_text(encoding="utf-8")
    meta = f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">'
    page = page.replace("<head>", "<head>" + meta, 1).replace("</body>", _PROBE + "</body>", 1)
    with tempfile.TemporaryDirectory() as folder:
        probed = Path(folder) / "probed.html"
        probed.write_text(page, encoding="utf-8")
        dom = _run(binary, [f"--window-size={width},{height}", "--virtual-time-budget=10000", "--dump-dom"],
                   probed.as_uri(), timeout)
    found = re.search(r'<pre id="browser-probe">(.*?)</pre>', dom, re.S)
    if found is None:
        raise RuntimeError(f"the probe wrote nothing in {html_path} (the page did not finish loading)")
    return json.loads(html.unescape(found.group(1)))


def screenshot(html_path: Path, png_path: Path, size: tuple[int, int] = FIRST_VIEWPORT,
               timeout: float = 120.0) -> Path:
    """The first `size` pixels of the page as a PNG."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError(f"no Chromium on PATH (looked for {', '.join(CANDIDATES)}); install Debian's "
                                "`chromium` package")
    png_path = Path(png_path).resolve()
    _run(binary, [f"--window-size={size[0]},{size[1]}", f"--screenshot={png_path}"],
         Path(html_path).resolve().as_uri(), timeout)
    return png_path


def screenshot_report(out_dir: Path) -> Path:
    """DIR/report-first-viewport.png from DIR/report.html."""
    html_path = Path(out_dir) / "report.html"
    if not html_path.exists():
        raise FileNotFoundError(f"{html_path} is missing; run `python -m verify report --out {out_dir}` first")
    return screenshot(html_path, Path(out_dir) / SCREENSHOT_NAME)
