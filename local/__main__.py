"""Entry point for ``python -m local``."""
from local.cli import main

raise SystemExit(main())
