"""`airo new-plugin`: the generated package installs, airo lists it, and its own tests pass."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import run_cli


@pytest.mark.slow  # a subprocess or a model end to end: seconds; CI runs it
def test_generated_plugin_installs_is_listed_and_its_tests_pass(tmp_path):
    proc = run_cli("new-plugin", "my-thing2", "--dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    package = tmp_path / "airo-my-thing2"
    assert f"created {package}" in proc.stdout
    assert (package / "airo_my_thing2" / "__init__.py").is_file()
    assert 'my-thing2 = "airo_my_thing2"' in (package / "pyproject.toml").read_text()

    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--target", str(site), str(package)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "AIRO_STRICT_PLUGINS": "1"}
    listed = run_cli("plugins", env=env)
    assert listed.returncode == 0, listed.stderr
    assert ("my-thing2  (airo-my-thing2 0.1.0)\n    formats: my-thing2-qa\n    templates: my-thing2-chat\n"
            in listed.stdout)

    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=package,
                           capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "11 passed" in tests.stdout


def test_existing_folder_is_never_overwritten(tmp_path):
    existing = tmp_path / "airo-mine"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    proc = run_cli("new-plugin", "mine", "--dir", tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip() == f"error: {existing} already exists; remove it or pass another --dir"
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("name, problem", [
    ("my_thing", "use letters, digits and single dashes"),
    ("2fast", "starting with a letter"),
    ("a--b", "single dashes"),
    ("trailing-", "single dashes"),
    ("has space", "single dashes"),
    ("", "single dashes"),
    ("airo-thing", "leave out the airo- prefix (the package is airo-NAME): airo new-plugin thing"),
    ("loaders", "is taken by airo's entry point"),
])
def test_bad_names(tmp_path, name, problem):
    from airo.core.errors import ConfigError
    from airo.plugins.scaffold import create_plugin

    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        create_plugin(name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_names_map_to_package_and_registrations(tmp_path):
    from airo.plugins.scaffold import create_plugin, substitutions

    assert substitutions("web-qa-2") == {"name": "web-qa-2", "package": "airo_web_qa_2", "format": "web-qa-2-qa",
                                         "template": "web-qa-2-chat", "cls": "WebQa2Template"}
    target = create_plugin("Web-QA-2", tmp_path)
    assert target == tmp_path / "airo-web-qa-2"
    source = (target / "airo_web_qa_2" / "__init__.py").read_text()
    assert "class WebQa2Template:" in source and 'register("web-qa-2-qa", convert' in source
    assert "$" not in "".join(p.read_text() for p in target.rglob("*") if p.is_file())
    compile(source, "__init__.py", "exec")


def test_missing_dir_and_half_written_package(tmp_path, monkeypatch):
    from airo.core.errors import ConfigError
    from airo.plugins import scaffold

    with pytest.raises(ConfigError, match="--dir .*nowhere: no such folder"):
        scaffold.create_plugin("x", tmp_path / "nowhere")
    calls = []

    def failing_render(template, values):
        calls.append(template)
        if len(calls) == 3:
            raise OSError("disk full")
        return "text"

    monkeypatch.setattr(scaffold, "_render", failing_render)
    with pytest.raises(OSError, match="disk full"):
        scaffold.create_plugin("x", tmp_path)
    assert not (tmp_path / "airo-x").exists()
