"""Build the demo cohort: synthetic slides of real tissue textures and their sheet."""

from histoatlas.demo import build_demo_cohort
from histoatlas.pipeline.jobs import job_logging


def main(smk) -> None:
    with job_logging(smk):
        build_demo_cohort(
            list(smk.output.slides),
            smk.output.sheet,
            source=smk.input.wheel,
            label_paths=list(smk.output.labels),
            seed=int(smk.params.seed),
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
