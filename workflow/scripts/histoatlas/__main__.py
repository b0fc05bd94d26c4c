"""histoatlas's command line: ``python -m histoatlas presets`` lists the encoder presets.

Each preset row says the model, the weights file its authors publish and where, the
embedding width, the tiling it reads and how a tile becomes the network's input. A model
directory with that file and ``{"architecture": "<preset>", "weights": "<file>"}`` as
``params.json`` is all a preset needs. ``--markdown`` prints the README's table.
"""

from __future__ import annotations

import argparse
import sys

from histoatlas.backends.torch.encoders.presets import list_presets, presets_markdown

COLUMNS = ("preset", "dim", "embedding", "weights_file", "tiling", "input", "published_at")


def presets_text() -> str:
    """The presets as an aligned plain-text table (one row per preset)."""
    rows = [dict(zip(COLUMNS, COLUMNS, strict=True))] + [
        {c: str(row[c]) for c in COLUMNS} for row in list_presets()
    ]
    widths = {c: max(len(r[c]) for r in rows) for c in COLUMNS}
    lines = ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS).rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m histoatlas", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    presets = commands.add_parser(
        "presets", help="list the encoder presets and the weights file each expects"
    )
    presets.add_argument("--markdown", action="store_true", help="print the README's table")
    args = parser.parse_args(argv)
    if args.command == "presets":
        sys.stdout.write(presets_markdown() if args.markdown else presets_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
