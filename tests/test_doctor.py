"""`airo doctor`: runs on a CPU-only machine, reports plugins, wandb (never the key) and the cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import run_cli

SECRET = "0123456789abcdef-not-a-real-key"


@pytest.fixture
def broken_plugin_site(tmp_path) -> Path:
    """A folder for PYTHONPATH with an installed (dist-info) plugin whose import fails."""
    site = tmp_path / "site"
    info = site / "airo_broken_doctor-1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: airo-broken-doctor\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text("[airo]\nbroken_doctor = airo_broken_doctor\n")
    (site / "airo_broken_doctor.py").write_text("raise ImportError('needs the frobnicator')\n")
    return site


def _env(tmp_path, **extra) -> dict[str, str]:
    cache = tmp_path / "cache"
    (cache / "datasets").mkdir(parents=True)
    (cache / "datasets" / "blob").write_bytes(b"x" * 1500)
    (cache / "other").write_bytes(b"y" * 500)
    return {"AIRO_CACHE": str(cache), "HOME": str(tmp_path), **extra}


@pytest.mark.slow  # a subprocess or a model end to end: seconds; CI runs it
def test_doctor_text_on_cpu(tmp_path, broken_plugin_site):
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only report")
    env = _env(tmp_path, WANDB_API_KEY=SECRET, WANDB_MODE="",
               PYTHONPATH=os.pathsep.join(filter(None, [str(broken_plugin_site), os.environ.get("PYTHONPATH")])))
    proc = run_cli("doctor", env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "no CUDA device" in out
    assert "4-bit (bitsandbytes): works" in out
    assert "flash-attn" in out and "transformers  " in out
    assert "broken_doctor (airo-broken-doctor 1.2) FAILED: ImportError: needs the frobnicator" in out
    assert "inference (airo" in out and "loaders (airo" in out
    assert "logged in to api.wandb.ai (API key in WANDB_API_KEY)" in out
    assert SECRET not in out + proc.stderr
    assert f"{tmp_path / 'cache'}  2.0 KB (datasets: 1.5 KB)" in out
    assert "plugin broken_doctor (airo-broken-doctor) failed to load" in out


@pytest.mark.slow  # a subprocess or a model end to end: seconds; CI runs it
def test_doctor_json_parses(tmp_path):
    proc = run_cli("doctor", "--json", env=_env(tmp_path, WANDB_MODE="offline"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    import torch

    assert report["packages"]["torch"] == torch.__version__
    assert report["accelerator"]["cuda"] == torch.cuda.is_available()
    assert isinstance(report["bitsandbytes_4bit"]["ok"], bool)
    assert {"inference", "doctor", "scaffold"} <= {p["name"] for p in report["plugins"]}
    assert report["wandb"]["mode"] == "offline" and "offline" in report["wandb"]["summary"]
    assert report["cache"] == {"path": str(tmp_path / "cache"), "disabled": False, "exists": True,
                               "size_bytes": 2000, "datasets_bytes": 1500}
    assert isinstance(report["problems"], list)


def test_missing_package_is_not_installed():
    from airo.plugins.doctor import package_versions

    versions = package_versions(("torch", "airo-surely-not-a-real-package"))
    assert versions["torch"] and versions["airo-surely-not-a-real-package"] is None


def test_4bit_check_says_why_it_fails(monkeypatch):
    import bitsandbytes as bnb

    from airo.plugins import doctor

    works = {"ok": True, "device": "cpu", "detail": "nf4 Linear4bit forward pass works on cpu"}
    assert doctor.check_4bit("cpu") == works

    def broken(*args, **kwargs):
        raise RuntimeError("no 4-bit kernel for this device\nmore detail")

    monkeypatch.setattr(bnb.nn, "Linear4bit", broken)
    assert doctor.check_4bit("cpu") == {"ok": False, "device": "cpu",
                                        "detail": "RuntimeError: no 4-bit kernel for this device"}


def test_4bit_check_catches_wrong_values(monkeypatch):
    import torch
    from bitsandbytes import functional as bnbf

    from airo.plugins import doctor

    real = bnbf.dequantize_4bit
    monkeypatch.setattr(bnbf, "dequantize_4bit", lambda *a, **k: torch.zeros_like(real(*a, **k)))
    result = doctor.check_4bit("cpu")
    assert not result["ok"] and "computes wrong values" in result["detail"]


def test_wandb_key_from_netrc_is_never_shown(tmp_path):
    from airo.core import wandb_state

    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {SECRET}\n")
    netrc.chmod(0o600)
    state = wandb_state({}, home=tmp_path)
    assert state["api_key"] == str(netrc) and state["summary"].startswith("online, logged in")
    assert SECRET not in json.dumps(state)
    other = wandb_state({"WANDB_BASE_URL": "https://wandb.example.org"}, home=tmp_path)
    assert other["api_key"] is None and "not logged in to wandb.example.org" in other["summary"]
    assert wandb_state({"WANDB_DISABLED": "true"}, home=tmp_path)["summary"].startswith("disabled")


def test_unreadable_netrc_is_a_problem(tmp_path):
    from airo.core import wandb_state

    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai login\n")  # an entry without a password is no key
    assert wandb_state({}, home=tmp_path)["api_key"] is None
    netrc.write_text("nonsense here\n")
    state = wandb_state({}, home=tmp_path)
    assert state["api_key"] is None
    assert state["netrc_problem"] == f"{netrc}: NetrcParseError: bad toplevel token 'nonsense' ({netrc}, line 1)"


def test_cache_off(tmp_path):
    from airo.plugins.doctor import cache_state

    assert cache_state({"AIRO_CACHE": "off"})["disabled"] is True
    missing = cache_state({"AIRO_CACHE": str(tmp_path / "nothing")})
    assert missing["exists"] is False and missing["size_bytes"] == 0
    assert cache_state({})["path"] == str(Path.home() / ".cache" / "airo")
