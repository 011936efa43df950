"""The wheel holds every module and data file, and every module imports from the wheel alone.

An editable install imports a sub-package that pyproject's `packages` list forgets; the
wheel would not contain it. So: build the wheel from the project's files, check its
contents, and import every module of airo.core and airo.plugins from the extracted wheel
in a subprocess that cannot see the editable install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = {"core": "airo/core", "plugins": "airo/plugins"}


def project_files() -> list[Path]:
    """The files a clean clone has: git's tracked and not-ignored files, else a filtered walk."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                             capture_output=True, check=True, timeout=60).stdout
        files = [REPO / name for name in out.decode().split("\0") if name]
        return [f for f in files if f.is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache"}
        return [p for p in REPO.rglob("*") if p.is_file() and not (skip & set(p.relative_to(REPO).parts))
                and not any(part.endswith(".egg-info") or part.startswith(".venv") for part in p.parts)]


def source_files(python: bool) -> dict[str, Path]:
    """Python files (or the other files) under core/ and plugins/ -> their path inside the wheel."""
    out = {}
    for path in project_files():
        rel = path.relative_to(REPO)
        if rel.parts[0] in PACKAGES and (path.suffix == ".py") == python and path.suffix != ".pyc":
            out["/".join([PACKAGES[rel.parts[0]], *rel.parts[1:]])] = path
    return out


def module_names() -> list[str]:
    names = []
    for wheel_path in source_files(python=True):
        parts = wheel_path[: -len(".py")].split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts[-1] != "__main__":
            names.append(".".join(parts))
    return sorted(names)


def _can_build_offline() -> bool:
    """setuptools new enough for pyproject's build-system (>= 69, bdist_wheel built in from 70.1)."""
    try:
        import setuptools
    except ImportError:
        return False
    version = tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())
    if version >= (70, 1):
        return True
    try:
        import wheel  # noqa: F401
    except ImportError:
        return False
    return version >= (69, 0)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    for path in project_files():  # a copy, so the build writes nothing into the checkout
        rel = path.relative_to(REPO)
        if rel.parts[0] in ("tests", "examples", ".ci"):
            continue
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, src / rel)
    out = work / "dist"
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(src)]
    if _can_build_offline():
        command.insert(4, "--no-build-isolation")  # uses this environment's setuptools: no download
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheels = list(out.glob("airo-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def extracted(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("extracted")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    return target


def test_wheel_contains_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = source_files(python=True)
    assert "airo/core/__init__.py" in expected and "airo/plugins/__init__.py" in expected
    missing = sorted(set(expected) - names)
    assert not missing, f"modules missing from the wheel (add their package to pyproject's `packages`): {missing}"


def test_wheel_contains_package_data(wheel):
    """Every other file in the package folders (templates, the llama-1 tokenizer files...) ships too."""
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(set(source_files(python=False)) - names)
    assert not missing, f"data files missing from the wheel (add them to pyproject's package-data): {missing}"


def test_wheel_declares_every_builtin_plugin(wheel):
    with zipfile.ZipFile(wheel) as zf:
        entry_points = next(n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))
        text = zf.read(entry_points).decode()
    section, declared, scripts = None, {}, {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line:
            key, value = (s.strip() for s in line.split("=", 1))
            (declared if section == "airo" else scripts if section == "console_scripts" else {})[key] = value
    assert scripts.get("airo") == "airo.core.cli:main"
    # Every top-level plugin module or package that implements a hook is an entry point; the
    # rest are libraries the built-ins share (quantization, model_card) and register nothing.
    builtin = set()
    for path in (REPO / "plugins").iterdir():
        if path.name.startswith("_") or path.name.startswith("."):
            continue
        source = path if path.suffix == ".py" else path / "__init__.py"
        if source.is_file() and "@hookimpl" in source.read_text(encoding="utf-8"):
            builtin.add(f"airo.plugins.{path.stem}")
    targets = {value.split(":")[0] for value in declared.values()}
    assert builtin <= targets, f"built-in plugins without an entry point in group airo: {sorted(builtin - targets)}"
    assert targets <= builtin, f"entry points pointing at missing modules: {sorted(targets - builtin)}"
    # The installed (editable) metadata agrees, so a stale install is caught too.
    import importlib.metadata

    installed = {ep.name: ep.value for ep in importlib.metadata.distribution("airo").entry_points
                 if ep.group == "airo"}
    assert installed == declared, "the installed airo is stale: reinstall it (pip install -e .)"


_IMPORT_ALL = """
import importlib, json, sys
names = json.loads(sys.argv[1])
root = sys.argv[2]
failed, outside = {}, []
for name in names:
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
        continue
    if not (getattr(module, "__file__", None) or "").startswith(root):
        outside.append(f"{name} from {getattr(module, '__file__', None)}")
import importlib.metadata
eps = sorted(ep.name for ep in importlib.metadata.entry_points(group="airo")
             if ep.dist.metadata["Name"] == "airo")
print(json.dumps({"failed": failed, "outside": outside, "entry_points": eps,
                  "dist": str(importlib.metadata.distribution("airo")._path)}))
"""


def test_every_module_imports_from_the_wheel(extracted, tmp_path):
    """`python -S`: no site-packages .pth files, so the editable install's finder is not loaded;
    the site-packages folder is on PYTHONPATH only for the dependencies (torch, transformers...)."""
    names = module_names()
    assert "airo.core.cli" in names and any(n.startswith("airo.plugins.") for n in names)
    site_packages = sysconfig.get_paths()["purelib"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AIRO_DISABLE_PLUGINS")}
    env["PYTHONPATH"] = os.pathsep.join([str(extracted), site_packages])
    result = subprocess.run([sys.executable, "-S", "-c", _IMPORT_ALL, json.dumps(names), str(extracted)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}, report["failed"]
    assert report["outside"] == [], "imported from outside the wheel: " + ", ".join(report["outside"])
    assert report["dist"].startswith(str(extracted)), report["dist"]
    assert report["entry_points"], "the wheel's entry points are not visible"
