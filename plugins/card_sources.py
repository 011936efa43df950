"""The model card's Data section: the sources of a mix (``datasets:``) with what each gave,
read from the data report the save action writes beside the card. A library of the
``model_card`` module (no plugin: it registers nothing)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DATA_REPORT = "data_report.json"  # airo.core.DATA_REPORT_FILE
COLUMNS = ("source", "format / template", "share", "records read", "skipped", "duplicates removed",
           "decontaminated", "train / eval examples", "trained tokens")


def saved_sources(folder: str | os.PathLike) -> list[dict[str, Any]] | None:
    """The ``sources`` of the data report saved in ``folder``, or None (one dataset, no report)."""
    try:
        sources = json.loads((Path(folder) / DATA_REPORT).read_text(encoding="utf-8")).get("sources")
    except (OSError, ValueError, AttributeError):
        return None
    return sources if isinstance(sources, list) and sources else None


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else "?"


def _name(path: Any) -> str:
    """A Hub name as it is, a local path by its file name (the path was the training machine's)."""
    text = str(path or "?")
    parts = text.split("/")
    return text if len(parts) == 2 and all(parts) and not text.startswith((".", "~")) else Path(text).name or text


def _cells(row: dict[str, Any]) -> list[str]:
    skipped = row.get("skipped") if isinstance(row.get("skipped"), dict) else {}
    amount = row.get("amount", 1)
    share = row.get("share_of_trained_tokens")
    return [f"`{_name(row.get('path'))}`", f"{row.get('format', '?')} / {row.get('template', '?')}",
            f"{row.get('share', 'weight')} {amount:g}" if isinstance(amount, (int, float)) else "?",
            _count(row.get("records_read")),
            _count(sum(v for v in skipped.values() if isinstance(v, int)))
            + (f" ({', '.join(f'{k} {v}' for k, v in sorted(skipped.items()))})" if skipped else ""),
            _count(row.get("duplicates_removed")), _count(row.get("decontaminated")),
            f"{_count(row.get('train_examples'))} / {_count(row.get('eval_examples'))}",
            _count(row.get("trained_tokens"))
            + (f" ({100 * share:.1f}%)" if isinstance(share, (int, float)) else "")]


def sources_table(sources: list[Any]) -> str:
    """A Markdown table, one row per source in list order."""
    rows = [list(COLUMNS), ["---"] * len(COLUMNS)]
    rows += [_cells(row) for row in sources if isinstance(row, dict)]
    return "\n".join("| " + " | ".join(" ".join(str(c).split()).replace("|", "\\|") for c in cells) + " |"
                     for cells in rows)
