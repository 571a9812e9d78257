"""Rendering of the jinja2 templates shipped in `templates/` (installed as `edgepipe_templates`).

One environment per template search path: strict undefined variables (a typo fails the build,
not the device), autoescape for HTML/XML only (runners and shell scripts must stay verbatim), and
no timestamps or other run-dependent values, so bundles stay byte-for-byte deterministic.

Search path: a target plugin's own `templates/` folders first (`Target.template_packages()`, e.g.
the runner of a runtime edgepipe does not know), then ours; a plugin may also override one of
ours by giving its file the same name.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

import jinja2

from edgepipe.errors import inert_text

PLUGIN_TEMPLATE_FOLDER = "templates"  # inside a target plugin's package


_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_\[\]<>|!#&~])")


def _one_line(value) -> str:
    return inert_text(str(value)).replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")


def md_code(value) -> str:
    """`value` as one Markdown code span: a name cannot close it (the fence is longer than any run
    of backticks inside), start a line of its own or split a table cell."""
    text = _one_line(value).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text[:1] == "`" or text[-1:] == "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_text(value) -> str:
    """`value` as literal Markdown text on one line: no link, image, HTML, emphasis, code or cell
    break (each punctuation mark that could make one is backslash-escaped)."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", _one_line(value))


@lru_cache(maxsize=None)
def environment(packages: tuple[str, ...] = ()) -> jinja2.Environment:
    """The environment that searches `packages`' template folders, then edgepipe's own."""
    loaders = [jinja2.PackageLoader(package, PLUGIN_TEMPLATE_FOLDER) for package in packages]
    loaders.append(jinja2.FileSystemLoader(str(resources.files("edgepipe_templates"))))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "htm", "xml", "html.j2", "xml.j2"),
                                            default_for_string=False, default=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(md_code=md_code, md_text=md_text)  # what Markdown templates insert
    return env


def has_templates(package: str) -> bool:
    """Does `package` ship a templates/ folder (a plugin that carries its own runner)?"""
    try:
        return resources.files(package).joinpath(PLUGIN_TEMPLATE_FOLDER).is_dir()
    except (ModuleNotFoundError, TypeError):
        return False


def render(template_name: str, packages: tuple[str, ...] = (), /, **context) -> str:
    """Render `template_name`, searched in `packages`' templates/ first, then in `templates/`."""
    return environment(tuple(packages)).get_template(template_name).render(**context)
