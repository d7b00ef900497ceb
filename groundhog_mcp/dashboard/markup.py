"""HTML built by construction-time escaping: every value is escaped unless it is :class:`Html`.

Why not a template engine: the pages are a handful of small fragments, and a builder whose
only way to put text into a page escapes it needs no new runtime dependency and no autoescape
setting that could be turned off. Trusted markup exists only as :class:`Html`, produced here.
"""

from __future__ import annotations

import html as _html
from collections.abc import Iterable
from urllib.parse import quote, urlencode

__all__ = ["Html", "attrs_query", "escape", "join", "markup", "url_part"]


class Html(str):
    """Markup that is already safe to put into a page (built by :func:`markup` or :func:`join`)."""

    __slots__ = ()


def escape(value: object) -> Html:
    """``value`` as HTML text: unchanged if it is :class:`Html`, escaped (quotes too) otherwise."""
    if isinstance(value, Html):
        return value
    return Html(_html.escape("" if value is None else str(value), quote=True))


def _argument(value: object) -> object:
    # Numbers stay numbers (safe as text, and format specs like {x:.1f} apply to them).
    return value if isinstance(value, int | float) and not isinstance(value, bool) else escape(value)


def markup(template: str, *args: object, **kwargs: object) -> Html:
    """``template.format`` with every argument escaped (``template`` itself is trusted markup)."""
    return Html(template.format(*(_argument(a) for a in args), **{k: _argument(v) for k, v in kwargs.items()}))


def join(parts: Iterable[object], separator: str = "") -> Html:
    """Fragments (escaped unless :class:`Html`) joined by the trusted ``separator``."""
    return Html(separator.join(escape(p) for p in parts))


def url_part(text: str) -> str:
    """A path segment, percent-encoded (context names are already URL-safe; this keeps it so)."""
    return quote(text, safe="")


def attrs_query(**params: object) -> str:
    """A query string (``?a=1&b=2``) of the parameters that are not None, or ``""``."""
    given = {k: str(v) for k, v in params.items() if v is not None and v != ""}
    return "?" + urlencode(given) if given else ""
