"""The Jinja2 templates of the HTML pages: the run report (``index.html.j2``, ``masks.html.j2``)
and the comparison of a multirun (``comparison.html.j2``, ``comparison_link.html.j2``).

Templates live in the ``templates/`` folder next to this module (package data). Every value is
HTML-escaped by autoescaping as it goes into a page, so callers pass plain strings and numbers;
numbers are formatted by the ``fmt`` filter (:func:`fmt`) or in Python. A variable that a template
uses but the caller did not pass is an error (``StrictUndefined``), not an empty string.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).with_name("templates")


def fmt(value, digits: int = 3) -> str:
    """A value as a table shows it: floats to ``digits`` decimals, ``None`` as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


@cache
def environment() -> jinja2.Environment:
    """The (cached) environment: autoescaping on, undefined variables an error."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    return env


def render(name: str, **context) -> str:
    """The template ``name`` (in ``templates/``) rendered with ``context``."""
    return environment().get_template(name).render(**context)
