"""``python -m airo.core train ...``: what torchrun and accelerate launch run."""

from .cli import main

if __name__ == "__main__":
    main()
