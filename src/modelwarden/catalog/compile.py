"""Rebuild ``ops.json`` from ``ops.toml``: ``python -m modelwarden.catalog.compile [--check]``.

``--check`` exits 1 (and changes nothing) when ``ops.json`` is out of date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from modelwarden.catalog import compile_ops

HERE = Path(__file__).resolve().parent


def render() -> str:
    """The ``ops.json`` text for the current ``ops.toml``."""
    return json.dumps(compile_ops((HERE / "ops.toml").read_bytes()), indent=0) + "\n"  # keeps the TOML order


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    target = HERE / "ops.json"
    text = render()
    current = target.read_text("utf-8") if target.exists() else ""
    if "--check" in argv:
        if current != text:
            print(f"{target} is out of date: run python -m modelwarden.catalog.compile", file=sys.stderr)
            return 1
        return 0
    if current != text:
        target.write_text(text, "utf-8")
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
