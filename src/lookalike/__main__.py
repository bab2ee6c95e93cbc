"""`python -m lookalike`: what torchrun's `--module lookalike` (`-m lookalike`) runs in each process."""

from .cli import main

if __name__ == "__main__":
    main()
