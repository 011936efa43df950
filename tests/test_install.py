"""install.py: the torch build it picks for a machine, and the pip commands it runs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("airo_install", REPO / "install.py")
install = importlib.util.module_from_spec(spec)
spec.loader.exec_module(install)


@pytest.mark.parametrize("installed, system, gpu, expected", [
    ("2.13.0 (CPU build)", "Linux", False, "keep"),
    ("2.13.0 (CUDA 12.8 build)", "Linux", True, "keep"),
    (None, "Linux", True, "cuda"),
    (None, "Linux", False, "cpu"),
    (None, "Windows", False, "cpu"),
    (None, "Darwin", False, "default"),
])
def test_auto_choice_follows_the_machine(installed, system, gpu, expected):
    assert install.torch_choice("auto", installed=installed, system=system, gpu=gpu) == expected


def test_an_explicit_choice_wins():
    assert install.torch_choice("cuda", installed=None, system="Linux", gpu=False) == "cuda"
    assert install.torch_choice("cpu", installed=None, system="Linux", gpu=True) == "cpu"


def test_cpu_torch_comes_from_the_cpu_index_before_airo():
    commands = install.pip_commands("cpu", test=True, cpu_index="https://mirror.example/cpu")
    assert commands[0][-4:] == ["install", "torch", "--index-url", "https://mirror.example/cpu"]
    assert commands[1][-2:] == ["-e", f"{REPO}[test]"]
    assert all(c[:3] == [sys.executable, "-m", "pip"] for c in commands)  # the Python that runs the tests


def test_kept_torch_installs_only_airo():
    assert install.pip_commands("keep", test=False, cpu_index="x") == [
        [sys.executable, "-m", "pip", "install", "-e", str(REPO)]]


def test_dry_run_names_the_build_and_installs_nothing():
    proc = subprocess.run([sys.executable, str(REPO / "install.py"), "--test", "--dry-run"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "keeping the installed torch" in proc.stdout  # the test environment has torch
    assert f"-m pip install -e {REPO}[test]" in proc.stdout
