"""MkDocs hooks (`hooks:` in mkdocs.yml): build-time content generated from the code.

`docs/configuration.md` holds the marker `<!-- config-keys -->`; at build time it is replaced by one table per
config section, made from `pspnet.config.describe_keys()`, so that a key added to the typed config appears on
the page without anyone editing it. `docs/architecture.md` holds `<!-- import-layers -->`, replaced by the
import contracts of `[tool.importlinter]` in pyproject.toml.
"""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path

MARKER = "<!-- config-keys -->"
LAYERS_MARKER = "<!-- import-layers -->"
ROOT = Path(__file__).resolve().parent.parent
SECTIONS = {
    "model": "The network: encoder, pyramid pooling module, decoder and auxiliary heads.",
    "data": "Where the dataset is, how it is read, normalised and augmented.",
    "train": "The training recipe, the device and mixed precision, logging and checkpoints.",
    "eval": "The inference protocol used by validation, `evaluate`, `predict` and `serve`, and the metrics.",
}
_CODE_SPAN = re.compile(r"`([^`]+)`")

_src = ROOT / "src"
if str(_src) not in sys.path:  # the package is installed in editable mode; this makes the hook work without it
    sys.path.insert(0, str(_src))


_MARKDOWN_CHARACTERS = {ord(c): f"&#{ord(c)};" for c in "|[]*_\\`"}


def _code(text: str) -> str:
    """Inline code as an HTML element. Markdown still reads the inside of inline HTML, so the characters it
    would act on are entities: `|` (a table cell separator), `[` `]` (links), `*` `_` (emphasis), `\\`, and `` ` ``."""
    return f"<code>{html.escape(text, quote=False).translate(_MARKDOWN_CHARACTERS)}</code>"


def escape_cell(text: str) -> str:
    """One table cell: code spans become `<code>` elements, every other `|` is escaped as `\\|`."""
    parts, last = [], 0
    for match in _CODE_SPAN.finditer(text):
        parts.append(text[last : match.start()].replace("|", "\\|"))
        parts.append(_code(match.group(1)))
        last = match.end()
    parts.append(text[last:].replace("|", "\\|"))
    return "".join(parts).replace("\n", " ")


def config_tables() -> str:
    """The Markdown that replaces the marker: a heading and a table for each top-level section."""
    from pspnet.config import describe_keys

    by_section: dict[str, list[tuple[str, str, str, str]]] = {}
    for row in describe_keys():
        by_section.setdefault(row[0].split(".", 1)[0], []).append(row)
    lines = []
    for section, rows in by_section.items():
        lines += [f"### `{section}`", "", SECTIONS.get(section, ""), ""]
        lines += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for key, type_name, default, description in rows:
            cells = [_code(key), _code(type_name), _code(default), escape_cell(description)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def import_contracts() -> str:
    """The Markdown that replaces the layers marker: the layers top to bottom, then the other contracts."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return "See `[tool.importlinter]` in `pyproject.toml`."
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    lines = []
    for contract in contracts:
        if contract["type"] == "layers":
            lines += [f"**{contract['name']}** (contract `{contract['id']}`), from the top:", ""]
            for number, layer in enumerate(contract["layers"], 1):
                modules = ", ".join(_code(module.strip()) for module in layer.split("|"))
                lines.append(f"{number}. {modules}")
            lines.append("")
    lines += ["The other contracts:", ""]
    for contract in contracts:
        if contract["type"] == "layers":
            continue
        detail = ""
        if contract["type"] == "forbidden":
            sources = ", ".join(_code(m) for m in contract["source_modules"])
            forbidden = ", ".join(_code(m) for m in contract["forbidden_modules"])
            detail = f": {sources} never imports {forbidden}"
        lines.append(f"- **{contract['name']}** (contract `{contract['id']}`, type `{contract['type']}`){detail}")
    return "\n".join(lines) + "\n"


def table_pipes(markdown: str) -> str:
    """Pages are written to render on GitHub too, where a `|` inside a code span of a table row is written
    `\\|`. Python-Markdown keeps that backslash in code spans, so such spans become `<code>` elements here."""
    lines, fenced = [], False
    for line in markdown.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and line.lstrip().startswith("|") and "\\|" in line:
            line = _CODE_SPAN.sub(
                lambda m: _code(m.group(1).replace("\\|", "|")) if "\\|" in m.group(1) else m.group(0), line
            )
        lines.append(line)
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """MkDocs event: fill the markers with the generated content; fix the pipes of table rows."""
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, config_tables())
    if LAYERS_MARKER in markdown:
        markdown = markdown.replace(LAYERS_MARKER, import_contracts())
    return table_pipes(markdown)
