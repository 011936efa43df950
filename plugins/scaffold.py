"""``airo new-plugin NAME``: a ready-to-install plugin package to start from.

    airo-NAME/
      pyproject.toml           the `airo` entry point NAME = "airo_NAME"
      airo_NAME/__init__.py    a dataset format (NAME-qa) and a prompt template (NAME-chat)
      tests/test_airo_NAME.py  passing tests built on airo.core.testing
      conftest.py, example.jsonl, README.md

The files are the templates in ``scaffold_template/`` with ``${...}`` filled in.
"""

from __future__ import annotations

import re
import shutil
import string
from importlib import metadata
from pathlib import Path

import click

from airo.core import ConfigError, hookimpl

TEMPLATE_DIR = Path(__file__).resolve().parent / "scaffold_template"
# template file -> path in the new package ({package} is the Python package name)
FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "conftest.py.tmpl": "conftest.py",
    "example.jsonl.tmpl": "example.jsonl",
    "__init__.py.tmpl": "{package}/__init__.py",
    "test_plugin.py.tmpl": "tests/test_{package}.py",
}
NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


def check_name(name: str) -> str:
    """The plugin name, lower-cased; a ConfigError saying what is wrong with it otherwise."""
    lowered = name.lower()
    if not NAME.fullmatch(lowered):
        raise ConfigError(f"plugin name {name!r}: use letters, digits and single dashes, starting with a letter "
                          "(e.g. my-format)")
    if lowered.startswith("airo-"):
        raise ConfigError(f"plugin name {name!r}: leave out the airo- prefix (the package is airo-NAME): "
                          f"airo new-plugin {lowered[len('airo-'):]}")
    taken = {ep.name.lower(): ep for ep in metadata.entry_points(group="airo")}
    if lowered in taken:
        dist = getattr(taken[lowered], "dist", None)
        owner = dist.metadata["Name"] if dist is not None else "an installed package"
        raise ConfigError(f"plugin name {name!r} is taken by {owner}'s entry point; pick another name")
    return lowered


def substitutions(name: str) -> dict[str, str]:
    package = "airo_" + name.replace("-", "_")
    return {"name": name, "package": package, "format": f"{name}-qa", "template": f"{name}-chat",
            "cls": "".join(part.capitalize() for part in name.split("-")) + "Template"}


def _render(template: str, values: dict[str, str]) -> str:
    return string.Template((TEMPLATE_DIR / template).read_text(encoding="utf-8")).substitute(values)


def create_plugin(name: str, directory: str | Path = ".") -> Path:
    """Write the package ``airo-NAME`` into ``directory`` and return its path. An existing
    folder is never touched; a failure half-way removes what was written."""
    name = check_name(name)
    parent = Path(directory)
    if not parent.is_dir():
        raise ConfigError(f"--dir {directory}: no such folder")
    values = substitutions(name)
    target = parent / f"airo-{name}"
    try:
        target.mkdir()  # claims the name: fails if anything is there, even an empty folder
    except FileExistsError:
        raise ConfigError(f"{target} already exists; remove it or pass another --dir") from None
    try:
        for template, relative in FILES.items():
            path = target / relative.format(package=values["package"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_render(template, values), encoding="utf-8")
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


@hookimpl
def register_commands(cli):
    @cli.command("new-plugin")
    @click.argument("name")
    @click.option("--dir", "directory", default=".", show_default=True, help="Where to create airo-NAME/.")
    def new_plugin_command(name, directory):
        """Create a plugin package airo-NAME with a dataset format, a prompt template and tests."""
        target = create_plugin(name, directory)
        values = substitutions(name.lower())
        click.echo(f"created {target}: entry point {values['name']} -> {values['package']}, "
                   f"format {values['format']}, template {values['template']}")
        click.echo(f"next:\n  pip install -e {target}\n  airo plugins\n  cd {target} && python -m pytest -q")
