"""The `nonstop` commands, grouped by what they act on, each module with its own typer app.

The root app (nonstop_ops/cli.py) assembles them; they import `common` for the shared
options and helpers, never the root.
"""
