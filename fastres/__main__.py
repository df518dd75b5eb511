"""``python -m fastres`` (and ``torchrun -m fastres``) runs the CLI."""

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while torch loads (or a study stopping it): nothing started
    raise SystemExit(130) from None

raise SystemExit(main())
