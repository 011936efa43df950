"""wandb's login state, read without importing wandb or reading the key out: ``airo doctor``
shows it, and a run that reports to wandb online without a key fails before anything loads
(wandb itself would stop only once the Trainer starts, after the model load)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ConfigError

WANDB_DEFAULT_HOST = "https://api.wandb.ai"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def wandb_state(env=None, home: Path | None = None) -> dict[str, Any]:
    """wandb's mode and where its API key would come from; the key itself is never read out."""
    import netrc
    from urllib.parse import urlparse

    env = os.environ if env is None else env
    mode = (env.get("WANDB_MODE") or "").strip().lower() or None
    disabled = (env.get("WANDB_DISABLED") or "").strip().lower() in ("1", "true", "yes")
    host = urlparse(env.get("WANDB_BASE_URL") or WANDB_DEFAULT_HOST).hostname or "api.wandb.ai"
    state: dict[str, Any] = {"mode": mode, "disabled": disabled, "host": host, "api_key": None, "netrc_problem": None}
    if env.get("WANDB_API_KEY"):
        state["api_key"] = "WANDB_API_KEY"
    else:
        path = Path(env.get("NETRC") or (home or Path.home()) / ".netrc")
        if path.is_file():
            try:
                entry = netrc.netrc(str(path)).authenticators(host)
                if entry and entry[2]:  # (login, account, password): wandb keeps the key as the password
                    state["api_key"] = str(path)
            except (netrc.NetrcParseError, OSError) as exc:
                state["netrc_problem"] = f"{path}: {_reason(exc)}"
    if disabled or mode == "disabled":
        state["summary"] = "disabled (runs are not logged to wandb)"
    elif mode in ("offline", "dryrun"):
        state["summary"] = f"offline (WANDB_MODE={mode}): runs are logged locally; `wandb sync` uploads them"
    elif state["api_key"]:
        state["summary"] = f"online, logged in to {host} (API key in {state['api_key']})"
    else:
        state["summary"] = (f"online but not logged in to {host}: with --report_to wandb run `wandb login` "
                            "or set WANDB_MODE=offline")
    return state


def check_wandb_login(origin: str = "--report_to", env=None, home: Path | None = None) -> None:
    """Reporting to wandb online needs an API key (WANDB_API_KEY or wandb's netrc entry):
    without one, a ConfigError that says how to log in or log offline."""
    state = wandb_state(env, home)
    if state["disabled"] or state["mode"] in ("disabled", "offline", "dryrun") or state["api_key"]:
        return
    problem = f" ({state['netrc_problem']})" if state["netrc_problem"] else ""
    raise ConfigError(f"{origin}: wandb reports online but is not logged in to {state['host']}{problem}: "
                      "run `wandb login` (or set WANDB_API_KEY), set WANDB_MODE=offline to log locally, "
                      "or choose another --report_to")
