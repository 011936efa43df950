"""Start-up: ``airo --help`` vs ``python -c "import transformers, torch"`` (best of N each).

    python benchmarks/startup.py --repeat 5
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def _best(cmd, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    imports = _best([sys.executable, "-c", "import transformers, torch"], args.repeat)
    print("| command | best of %d (s) | vs import transformers, torch |" % args.repeat)
    print("| --- | ---: | ---: |")
    for name, cmd in (("airo --help", [sys.executable, "-m", "airo.core", "--help"]),
                      ("airo list", [sys.executable, "-m", "airo.core", "list"])):
        t = _best(cmd, args.repeat)
        print(f"| {name} | {t:.2f} | {t / imports:.2f} |")
    print(f"| python -c \"import transformers, torch\" | {imports:.2f} | 1.00 |")


if __name__ == "__main__":
    main()
