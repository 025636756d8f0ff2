"""The documentation stays true: generated parts are current, commands exist."""

from __future__ import annotations

import re

from appserver.config import SETTINGS, markdown
from tests.support import ROOT


def test_server_options_doc_is_generated_from_the_settings_table() -> None:
    committed = (ROOT / "docs" / "server-options.md").read_text()
    assert committed == markdown(), "docs/server-options.md is stale: run `make docs`"
    for setting in SETTINGS:
        assert f"`--{setting.name}`" in committed


def test_every_make_command_in_the_readme_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    mentioned = set(re.findall(r"`(?:[A-Z_]+=\S+ )?make ([a-z-]+)`", readme))
    mentioned |= set(re.findall(r"^make ([a-z-]+)", readme, re.M))
    assert mentioned, "the README names no make command"
    assert mentioned <= targets, f"README names missing targets: {mentioned - targets}"


def test_readme_flags_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    names = {s.name for s in SETTINGS} | {"help", "config"}
    # Flags of the other commands (python -m deploy, bench/*.py, scripts/django_suite.py).
    parsers = ("deploy/__main__.py", "bench/run.py", "bench/profile.py", "scripts/django_suite.py")
    sources = "".join((ROOT / path).read_text() for path in parsers)
    names |= set(re.findall(r'"--([a-z][a-z-]*)"', sources))
    for flag in set(re.findall(r"--([a-z][a-z_-]*)", readme)):
        flag = flag.rstrip("_-")
        assert flag in names, f"README documents unknown flag --{flag}"
