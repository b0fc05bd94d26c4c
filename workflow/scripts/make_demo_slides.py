"""Build the demo cohort: synthetic slides of real tissue textures and their sheet."""

import sys

from histoatlas.demo import build_demo_cohort


def main(smk) -> None:
    sys.stderr = open(smk.log[0], "w", buffering=1)
    build_demo_cohort(
        list(smk.output.slides),
        smk.output.sheet,
        source=smk.input.wheel,
        label_paths=list(smk.output.labels),
        seed=int(smk.params.seed),
        log=lambda line: print(line, file=sys.stderr),
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
