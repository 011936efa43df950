"""Rendering a chat template: airo's bounded renderer (``render_chat_template``, which
replaced ``apply_chat_template(tokenize=False)`` for untrusted templates) against
transformers' ``apply_chat_template``, for the built-in ChatML and llama-2 templates on a
13-message conversation. Best of 5 rounds of 300 renders each, contenders alternated;
the table shows the ratio (measured 0.8-0.9x when it replaced transformers' renderer).

    python benchmarks/chat_template_render.py
"""

from __future__ import annotations

import tempfile
import time


def main() -> None:
    from transformers import AutoTokenizer

    from airo.core.template_sandbox import render_chat_template, tokenizer_template_variables
    from airo.core.testing import build_tiny_tokenizer
    from airo.plugins.airoboros import LLAMA2
    from airo.plugins.templates import CHATML

    folder = tempfile.mkdtemp()
    build_tiny_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "system", "content": "be nice " * 20}]
    for i in range(6):
        messages += [{"role": "user", "content": f"question {i} " * 30},
                     {"role": "assistant", "content": f"answer {i} " * 50}]
    messages.append({"role": "user", "content": "last?"})
    variables = tokenizer_template_variables(tokenizer)

    print("| template | apply_chat_template (ms / render) | airo (ms / render) | airo / transformers |")
    print("|---|---:|---:|---:|")
    for template in (CHATML, LLAMA2):
        chat_template = template.chat_template
        contenders = {
            "transformers": lambda: tokenizer.apply_chat_template(messages, chat_template=chat_template,
                                                                  add_generation_prompt=True, tokenize=False),
            "airo": lambda: render_chat_template(chat_template, messages, source="x", add_generation_prompt=True,
                                                 **variables),
        }
        best = {name: float("inf") for name in contenders}
        for _ in range(5):
            for name, fn in contenders.items():
                start = time.perf_counter()
                for _ in range(300):
                    fn()
                best[name] = min(best[name], (time.perf_counter() - start) / 300)
        print(f"| {template.name} | {best['transformers'] * 1e3:.3f} | {best['airo'] * 1e3:.3f} | "
              f"{best['airo'] / best['transformers']:.2f}x |")


if __name__ == "__main__":
    main()
