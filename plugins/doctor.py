"""``airo doctor``: what this machine can do for airo, in one screen (or ``--json``).

Versions of the libraries airo builds on, CUDA devices, bf16, whether bitsandbytes 4-bit
layers really run here, the installed plugins and their load errors, wandb's login state
(never the key) and the dataset cache. Every check reports its failure instead of
raising: a doctor that crashes on a broken install tells nobody anything.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import click

from airo.core import describe_distributed, distributed_state, hookimpl, wandb_state

# distribution names, as pip knows them
PACKAGES = ("airo", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "deepspeed", "datasets",
            "flash-attn", "wandb")
NO_CUDA = "no CUDA device: airo runs on the CPU (fine for tiny models and tests, slow for real ones)"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution, None when it is not installed (read from
    the metadata: importing them all would take seconds)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def accelerator() -> dict[str, Any]:
    """CUDA devices with their memory and bf16 support, or why there are none."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken torch install is a finding
        return {"cuda": False, "devices": [], "bf16": False, "note": f"torch cannot be imported ({_reason(exc)})"}
    info: dict[str, Any] = {"cuda": torch.cuda.is_available(), "torch_cuda": torch.version.cuda, "devices": []}
    if not info["cuda"]:
        info.update(bf16=False, note=NO_CUDA)
        return info
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        device = {"index": index, "name": props.name, "total_gib": round(props.total_memory / 2**30, 1),
                  "capability": f"{props.major}.{props.minor}", "bf16": props.major >= 8}
        try:
            free, _ = torch.cuda.mem_get_info(index)
            device["free_gib"] = round(free / 2**30, 1)
        except Exception as exc:  # noqa: BLE001 - e.g. a device in exclusive use by another process
            device["free_gib"] = None
            device["note"] = _reason(exc)
        info["devices"].append(device)
    info["bf16"] = bool(info["devices"]) and all(d["bf16"] for d in info["devices"])
    return info


def check_4bit(device: str | None = None) -> dict[str, Any]:
    """Quantize a small Linear4bit on ``device`` (default: CUDA if present, else CPU) and
    check its forward pass against the dequantized weight: the QLoRA loader's building block."""
    try:
        import torch

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        import bitsandbytes as bnb
        from bitsandbytes import functional as bnbf

        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        generator = torch.Generator().manual_seed(0)
        layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=dtype, quant_type="nf4")
        layer.weight.data = torch.randn(64, 64, generator=generator).to(dtype)
        layer = layer.to(device)  # moving a Linear4bit quantizes it
        x = torch.randn(4, 64, generator=generator).to(device=device, dtype=dtype)
        with torch.no_grad():
            got = layer(x).float()
            weight = bnbf.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
            expected = (x @ weight.t().to(dtype)).float()
        error = (got - expected).abs().max().item()
        if not torch.isfinite(got).all() or error > 0.05 * expected.abs().max().item():
            detail = f"the 4-bit layer computes wrong values (error {error:.3g})"
            return {"ok": False, "device": device, "detail": detail}
        return {"ok": True, "device": device, "detail": f"nf4 Linear4bit forward pass works on {device}"}
    except Exception as exc:  # noqa: BLE001 - the reason is the finding
        return {"ok": False, "device": device, "detail": _reason(exc)}


def plugin_states() -> list[dict[str, Any]]:
    from airo.core import get_registry

    return [dict(name=i.name, distribution=i.distribution, version=i.version, provides=i.provides,
                 error=i.error, blocked=i.blocked) for i in get_registry().plugins.values()]


def _folder_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):  # does not follow symlinked folders
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass  # removed while we walked
    return total


def cache_state(env=None) -> dict[str, Any]:
    """Where airo caches tokenized datasets (``$AIRO_CACHE/datasets``) and how much is there."""
    from airo.core import cache_home

    root = cache_home(env)
    if root is None:
        return {"path": None, "disabled": True, "exists": False, "size_bytes": 0, "datasets_bytes": 0}
    state = {"path": str(root), "disabled": False, "exists": root.is_dir(), "size_bytes": 0, "datasets_bytes": 0}
    if state["exists"]:
        state["size_bytes"] = _folder_size(root)
        if (root / "datasets").is_dir():
            state["datasets_bytes"] = _folder_size(root / "datasets")
    return state


def diagnose() -> dict[str, Any]:
    """Everything ``airo doctor`` reports, as a JSON-ready dict; ``problems`` lists what needs action."""
    report = {
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": platform.platform(),
        "packages": package_versions(),
        "accelerator": accelerator(),
        "bitsandbytes_4bit": check_4bit(),
        "plugins": plugin_states(),
        "wandb": wandb_state(),
        "cache": cache_state(),
    }
    report["distributed"] = distributed_state(gpus=len(report["accelerator"].get("devices") or []))
    problems = [f"{name} is not installed" for name, version in report["packages"].items()
                if version is None and name not in ("flash-attn", "deepspeed")]
    problems += [f"plugin {p['name']} ({p['distribution']}) failed to load: {p['error']}"
                 for p in report["plugins"] if p["error"] and not p["blocked"]]
    if not report["bitsandbytes_4bit"]["ok"]:
        problems.append(f"4-bit layers do not work here (QLoRA, --bits 4): {report['bitsandbytes_4bit']['detail']}")
    if report["wandb"]["netrc_problem"]:
        problems.append(f"wandb credentials unreadable: {report['wandb']['netrc_problem']}")
    problems += report["distributed"]["problems"]
    report["problems"] = problems
    return report


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def format_report(report: dict[str, Any]) -> str:
    lines = ["versions"]
    lines.append(f"  {'python':<13} {report['python']['version']} ({report['python']['executable']})")
    for name, version in report["packages"].items():
        lines.append(f"  {name:<13} {version or 'not installed'}")
    acc = report["accelerator"]
    lines.append("accelerator")
    if acc["devices"]:
        lines.append(f"  CUDA {acc.get('torch_cuda')}, {len(acc['devices'])} device(s)")
        for d in acc["devices"]:
            free = f", {d['free_gib']} GiB free" if d.get("free_gib") is not None else ""
            lines.append(f"  cuda:{d['index']}  {d['name']}  {d['total_gib']} GiB{free}  "
                         f"compute {d['capability']}  bf16 {'yes' if d['bf16'] else 'no'}")
    else:
        lines.append(f"  {acc.get('note') or NO_CUDA}")
    lines.append(f"  bf16: {'yes' if acc['bf16'] else 'no'}")
    four = report["bitsandbytes_4bit"]
    lines.append(f"  4-bit (bitsandbytes): {'works' if four['ok'] else 'NOT WORKING'}: {four['detail']}")
    lines.append("plugins")
    for p in report["plugins"]:
        state = "blocked" if p["blocked"] else (f"FAILED: {p['error']}" if p["error"] else "ok")
        provides = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in p["provides"].items())
        line = f"  {p['name']} ({p['distribution']} {p['version']}) {state}"
        lines.append(line + (f"  [{provides}]" if provides else ""))
    lines.append("wandb")
    lines.append(f"  {report['wandb']['summary']}")
    lines.append("distributed")
    lines += [f"  {line}" for line in describe_distributed(report["distributed"])]
    cache = report["cache"]
    lines.append("dataset cache")
    if cache["disabled"]:
        lines.append("  off (AIRO_CACHE=off): datasets are tokenized again on every run")
    elif cache["exists"]:
        lines.append(f"  {cache['path']}  {_size(cache['size_bytes'])} (datasets: {_size(cache['datasets_bytes'])})")
    else:
        lines.append(f"  {cache['path']}  (not created yet)")
    lines.append("problems" if report["problems"] else "no problems found")
    lines += [f"  - {p}" for p in report["problems"]]
    return "\n".join(lines)


@hookimpl
def register_commands(cli):
    @cli.command("doctor")
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    def doctor_command(as_json):
        """Check this machine: library versions, CUDA, bf16, 4-bit support, plugins, wandb, distributed setup, cache."""
        report = diagnose()
        click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
