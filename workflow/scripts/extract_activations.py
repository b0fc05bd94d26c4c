"""Extract per-tile activations of one slide into an HDF5 file."""

from dataclasses import replace

from histoatlas.analysis.extract import FeatureOptions, RunOptions, extract_slide
from histoatlas.io.tiling import TileOptions
from histoatlas.pipeline.jobs import job_logging


def main(smk) -> None:
    params = smk.params
    with job_logging(smk):
        extract_slide(
            smk.input.slide,
            smk.output.h5,
            model=params.model,
            # the reader is a resource: it changes no pixel, so no rerun either
            tiles=replace(TileOptions.from_mapping(params), reader=smk.resources.reader),
            features=FeatureOptions(
                layers=tuple(params.layers),
                pooling=None if params.pooling == "none" else params.pooling,
                include_preds=params.include_preds,
                precision=params.precision,
            ),
            run=RunOptions(batch_size=smk.resources.batch_size or None, num_workers=smk.threads),
            mpp=params.mpp,
            slide_name=smk.wildcards.slide,
            trust_model_code=params.trust_model_code,
        )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
