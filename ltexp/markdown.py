"""Text from users (experiment names, variant labels, references rows, claims) set in Markdown
that the MLflow UI or a viewer renders: it must stay text, never markup.

``<script>`` in an experiment name reached the aggregate run's description, which the UI renders;
a ``|`` breaks a table row; ``[x](javascript:…)`` is a link. :func:`markdown_text` escapes what
makes markup of plain text and keeps the rest readable in the raw file.
"""

from __future__ import annotations

import html

_ESCAPED = {"|": r"\|"}


def markdown_text(text: str) -> str:
    """``text`` as Markdown that renders as that text: HTML's ``& < >`` as entities, table
    pipes escaped, no ``](`` that would make a link (an interval's brackets stay
    as they are), line breaks and control characters as spaces."""
    escaped = html.escape(str(text), quote=False).replace("](", "]\\(")
    out = "".join(_ESCAPED.get(c, c) for c in escaped)
    return "".join(c if c.isprintable() else " " for c in out)
