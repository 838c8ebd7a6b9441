"""What every page of the report shares: the Jinja environment (autoescaping on), the Content-Security-Policy,
links to image files.
"""

from __future__ import annotations

import functools
import os
import urllib.parse

from rca_gpu.report.columns import share_text


def content_security_policy(nonce: str | None) -> str:
    """The Content-Security-Policy of a page (a ``<meta http-equiv>`` tag): scripts only with the page's own
    ``nonce`` (none at all when None), images only from ``file:`` (the thumbnails and originals beside the page)
    and ``data:``/``blob:`` URLs the page's own script makes, inline styles (plotly sets them), and nothing else:
    no network origin, no plug-ins, no forms, no ``<base>``. An escaping slip that lets markup from a data value
    into the page can then neither run a script (an injected ``<script>`` has no nonce; inline event handlers such
    as ``onerror=`` are refused) nor fetch anything. ``'unsafe-eval'`` is granted to the page's own scripts
    because plotly's WebGL renderer (regl) compiles its drawing code with ``new Function``; it lets no markup
    run: only code that already runs can call it."""
    script = f"'nonce-{nonce}' 'unsafe-eval'" if nonce else "'none'"
    return ("default-src 'none'; "
            f"script-src {script}; "
            "style-src 'unsafe-inline'; img-src file: data: blob:; "
            "connect-src 'none'; font-src 'none'; object-src 'none'; media-src 'none'; frame-src 'none'; "
            "worker-src 'none'; base-uri 'none'; form-action 'none'")


def file_url(path: str) -> str | None:
    """A ``file://`` URL of an absolute image path, every byte percent-encoded as needed; None for a path that
    is not absolute (features brought without images, in-memory arrays)."""
    if not path or not os.path.isabs(path):
        return None
    return "file://" + urllib.parse.quote_from_bytes(os.fsencode(path))


@functools.lru_cache(maxsize=1)
def environment():
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("rca_gpu.report", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["pct"] = share_text
    environment.filters["num"] = lambda v, d=2: "-" if v is None or (isinstance(v, float) and v != v) else f"{v:.{d}f}"
    return environment
