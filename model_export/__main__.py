"""``python -m model_export``: the CLI entry point."""
import sys

from model_export.cli import main

sys.exit(main())
