"""Operator tools run from a workstation, never shipped in a Lambda asset (e.g. ``python -m ops.keys``)."""
