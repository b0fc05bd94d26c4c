"""The atlas page: static files of the package copied beside the data.

``assets/index.html`` is copied as it is (no templating: the page reads everything that
varies from ``data/meta.js``), the rest of ``assets/`` below ``assets/`` of the atlas. The
vendored libraries (``assets/vendor/``) come with their licences; their README (where they
came from) stays in the repository.
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path

# files of assets/ that stay in the repository
_NOT_COPIED = ("README.md",)


def assets_dir() -> Path:
    """The package's ``assets`` folder (page, JavaScript, CSS, vendored libraries)."""
    return Path(str(resources.files("histoatlas.atlas") / "assets"))


def copy_page(out_dir: str | os.PathLike) -> Path:
    """Copy the page into an atlas folder; returns the path of its ``index.html``.

    Parameters
    ----------
    out_dir : path
        The atlas folder (its ``data/`` written by :func:`histoatlas.atlas.build_atlas`).

    Returns
    -------
    Path
    """
    out = Path(out_dir)
    source = assets_dir()
    shutil.copytree(
        source,
        out / "assets",
        ignore=shutil.ignore_patterns("index.html", "__pycache__", *_NOT_COPIED),
        dirs_exist_ok=True,
    )
    shutil.copyfile(source / "index.html", out / "index.html")
    return out / "index.html"
