"""Run a rule script's ``main(snakemake)`` in the test process, with a stand-in object.

The scripts attach their log themselves (:func:`histoatlas.pipeline.jobs.job_logging`) and
restore ``sys.stderr`` and logging when they return, so nothing needs undoing here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

SCRIPTS = Path(__file__).resolve().parents[1] / "workflow" / "scripts"


def run_script(name: str, smk) -> None:
    """Import ``workflow/scripts/{name}.py`` and call its ``main(smk)``."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(smk)


def snakemake_object(**parts) -> SimpleNamespace:
    """A stand-in for Snakemake's object: ``input``, ``output``, ``params`` (dicts become
    namespaces), ``log``, ``threads``, ``resources``, ``wildcards``."""
    smk = {"threads": 1, "resources": {}, "wildcards": {}, "params": {}, **parts}
    return SimpleNamespace(
        **{k: SimpleNamespace(**v) if isinstance(v, dict) else v for k, v in smk.items()}
    )
