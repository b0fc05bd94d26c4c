"""Extract per-tile activations of one slide into an HDF5 file."""

import os
import sys

from histoatlas.extract import extract_slide

_TISSUE_KEYS = (
    "otsu",
    "tissue_fraction",
    "grayspace_fraction",
    "grayspace_threshold",
    "whitespace_fraction",
    "whitespace_threshold",
)


def main(smk) -> None:
    sys.stderr = open(smk.log[0], "w", buffering=1)
    tiles, features = smk.params.tiles, smk.params.features
    extract_slide(
        smk.input.slide,
        smk.output.h5,
        model=smk.params.model,
        layers=features["layers"],
        pooling=None if features["pooling"] == "none" else features["pooling"],
        include_preds=features["include_preds"],
        precision=features["precision"],
        tile_px=tiles["px"],
        tile_um=tiles["um"],
        stride_div=tiles["stride_div"],
        mpp=smk.params.mpp,
        slide_name=smk.wildcards.slide,
        tissue={k: tiles[k] for k in _TISSUE_KEYS},
        allow_tile_px_mismatch=tiles["allow_model_mismatch"],
        trust_model_code=smk.params.trust_model_code,
        num_workers=smk.threads,
        batch_size=int(os.environ["HISTOATLAS_BATCH_SIZE"])
        if "HISTOATLAS_BATCH_SIZE" in os.environ
        else None,
        log=sys.stderr,
    )


if __name__ == "__main__":
    main(snakemake)  # noqa: F821  (injected by Snakemake)
