"""``python -m fastres`` (and ``torchrun -m fastres``) runs the CLI."""

from .cli import main

raise SystemExit(main())
