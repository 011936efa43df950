"""Rebuild the tiny llama shipped in examples/tiny-llama (used by the demo and the tests).

    python examples/make_tiny_model.py [OUTPUT_DIR]

A randomly initialised 2-layer LlamaForCausalLM (hidden size 64, ~300k parameters) with a
600-piece llama-style SentencePiece tokenizer (<unk>=0, <s>=1, </s>=2, byte fallback),
built by ``airo.core.testing.build_tiny_llama``. It knows nothing; it exists so every
training path (QLoRA 4-bit, LoRA, full fine-tune, DeepSpeed, merge) runs on a CPU in
seconds. Deterministic: the same airo and library versions give the same files.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from airo.core.testing import build_tiny_llama

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> None:
    out = Path(argv[0]) if argv else HERE / "tiny-llama"
    if out.exists():
        shutil.rmtree(out)
    build_tiny_llama(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"tiny llama saved to {out} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main(sys.argv[1:])
