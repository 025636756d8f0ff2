"""The key reference of docs/deploy.md, generated from the dataclasses in deploy/config.py.

``python -m deploy docs`` rewrites the part of docs/deploy.md between the
``BEGIN``/``END`` markers; a test fails when it is out of date.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .config import REQUIRED, TABLES, TOP_LEVEL_DOCS, Host

BEGIN = "<!-- BEGIN generated key reference (python -m deploy docs) -->"
END = "<!-- END generated key reference -->"


def _default(f: dataclasses.Field) -> str:  # type: ignore[type-arg]
    if f.metadata.get("derived"):
        return f"derived: {f.metadata['derived']}"
    if f.default is REQUIRED:
        return "**required**"
    if f.default is None:
        return "unset"
    value = f.default
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, tuple):
        return "`[]`" if not value else f"`{list(value)}`"
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def _table(title: str, cls: type) -> list[str]:
    lines = [
        f"### `{title}`",
        "",
        (cls.__doc__ or "").strip().split("\n")[0],
        "",
        "| key | default | meaning |",
    ]
    lines.append("|---|---|---|")
    for f in dataclasses.fields(cls):
        lines.append(f"| `{f.name}` | {_default(f)} | {f.metadata['doc']} |")
    return [*lines, ""]


def reference() -> str:
    """Markdown tables of every key, its default and its meaning."""
    lines = [BEGIN, "", "### Top level", "", "| key | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {doc} |" for name, doc in TOP_LEVEL_DOCS.items()]
    lines.append("")
    lines += _table("[[hosts]]", Host)
    for name, cls in TABLES.items():
        lines += _table(f"[{name}]", cls)
    lines += [END]
    return "\n".join(lines)


def update(path: Path) -> bool:
    """Replace the generated part of ``path``; True when it changed."""
    text = path.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + reference() + text[end:]
    if new != text:
        path.write_text(new)
    return new != text
