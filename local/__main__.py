"""Entry point for ``python -m local``."""
import sys

try:
    from local.cli import main
except ImportError as exc:  # e.g. run with a Python that lacks the project's dependencies
    print(f"error: missing dependency {exc.name or exc!s}: run `make setup` and use .venv/bin/python "
          f"(`.venv/bin/python -m local up`)", file=sys.stderr)
    raise SystemExit(2) from None

raise SystemExit(main())
