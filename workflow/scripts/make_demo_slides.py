"""Build the demo cohort: synthetic slides of real tissue textures and their sheet."""

import sys

from histoatlas.demo import build_demo_cohort


def main(smk) -> None:
    sys.stderr = open(smk.log[0], "w", buffering=1)
    demo = smk.params.demo
    labels = getattr(smk.output, "labels", None)
    build_demo_cohort(
        list(smk.output.slides),
        smk.output.sheet,
        source=smk.input.wheel,
        label_paths=list(labels) if labels is not None else None,
        seed=int(demo.get("seed", 0)),
        mpp=float(demo.get("mpp", 0.5)),
        log=lambda line: print(line, file=sys.stderr),
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
