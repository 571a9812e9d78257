"""Rendering of the jinja2 templates shipped in `templates/` (installed as `edgepipe_templates`).

One environment for every bundle file: strict undefined variables (a typo fails the build, not
the device), autoescape for HTML/XML only (runners and shell scripts must stay verbatim), and no
timestamps or other run-dependent values, so bundles stay byte-for-byte deterministic.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import jinja2


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    root = resources.files("edgepipe_templates")
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "htm", "xml", "html.j2", "xml.j2"),
                                            default_for_string=False, default=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(template_name: str, **context) -> str:
    """Render `templates/<template_name>` with the given variables."""
    return environment().get_template(template_name).render(**context)
