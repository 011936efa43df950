"""`airo preview`: trained tokens in green, masked tokens dimmed."""

from __future__ import annotations

from typing import Any


def print_preview(examples: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console()
    for ex in examples:
        console.rule(f"example {ex['index']}: {ex['num_tokens']} tokens, {ex['num_trained']} trained")
        text = Text()
        for piece in ex["tokens"]:
            text.append(piece["text"], style="bold green" if piece["trained"] else "dim")
        console.print(text)
    console.print("[bold green]green[/]: trained   [dim]dim[/]: masked (label -100)")
