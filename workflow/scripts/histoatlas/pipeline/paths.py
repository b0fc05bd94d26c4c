"""Every output path of the workflow, defined once: the rules and the qc table read them here.

Patterns hold Snakemake wildcards (``{featureset}``, ``{slide}``, ``{cohort}``, ``{label}``,
``{shard}``);
``str.format`` fills them outside Snakemake. Relative paths are relative to the directory
Snakemake runs in.
"""

from __future__ import annotations

# per slide (shared by every cohort that uses the featureset)
SLIDE_H5 = "results/features/{featureset}/{slide}.h5"
EXTRACT_LOG = "logs/extract_activations/{featureset}/{slide}.log"
EXTRACT_STATUS = "logs/extract_activations/{featureset}/{slide}.status.json"

# per cohort
COHORT = "results/{cohort}"
DATASET = {
    "tiles": "results/{cohort}/dataset/tiles.parquet",
    "slides": "results/{cohort}/dataset/slides.parquet",
    "features": "results/{cohort}/dataset/features.h5",
}
UMAP_MODEL = "results/{cohort}/umap/umap.joblib"
UMAP_COORDS = "results/{cohort}/umap/coords.parquet"
# the UMAP stage's intermediate files: the model fitted on the sample (its [0, 1] frame not
# yet set) and the sample's layout; one layout file per projection shard of slides
UMAP_FIT_MODEL = "results/{cohort}/umap/fit/umap.joblib"
UMAP_FIT_SAMPLE = "results/{cohort}/umap/fit/sample.parquet"
UMAP_SHARD = "results/{cohort}/umap/shards/{shard}.parquet"
UMAP_PLOT = "results/{cohort}/plots/umap_{label}.png"
MOSAIC_PNG = "results/{cohort}/mosaic/mosaic.png"
MOSAIC_MANIFEST = "results/{cohort}/mosaic/mosaic.parquet"
# the interactive atlas: one folder (index.html, its assets and data), written atomically
ATLAS = "results/{cohort}/atlas"
SALIENCY_TILES = "results/{cohort}/saliency/tiles.csv"
SALIENCY_MAPS = "results/{cohort}/saliency/maps"
SALIENCY_MANIFEST = "results/{cohort}/saliency/maps.csv"
SALIENCY_OVERVIEW = "results/{cohort}/saliency/overview.png"
QC_TABLE = "results/{cohort}/qc/slides.csv"
