"""The daemon's live status page: ``status_page.html``, one self-contained document.

The page holds no data of its own: its script fetches ``status.json`` every
second (``service.ops.status`` serves both) and draws the workers, the queue, a
throughput sparkline and the recent failures. Everything that comes from the
daemon is placed with ``textContent`` or as SVG coordinates, never parsed as
HTML: a task's error message and traceback are whatever the task made them,
so they are untrusted. The Content-Security-Policy the server sends (``CSP``)
allows only this script and this style, by hash, so that even a mistake here
could not run an injected script or load anything from elsewhere. Edit the
page in ``status_page.html`` (inline CSS and JS); the hashes follow from it.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources
from typing import Final

__all__ = ["CSP", "PAGE"]

PAGE: Final = resources.files(__package__).joinpath("status_page.html").read_bytes()
"""The page, UTF-8."""


def _inline(tag: str) -> str:
    """The text of the page's one ``<tag>...</tag>``, exactly as the browser hashes it."""
    found = re.findall(rf"<{tag}>(.*?)</{tag}>", PAGE.decode(), flags=re.S)
    if len(found) != 1:
        raise RuntimeError(f"status_page.html must hold exactly one <{tag}>, not {len(found)}")
    return str(found[0])


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP: Final = (
    f"default-src 'none'; script-src {_sha256(_inline('script'))}; "
    f"style-src {_sha256(_inline('style'))}; "
    "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
"""The Content-Security-Policy sent with the page: this script and style only, data from here."""
