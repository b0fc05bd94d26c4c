# histoatlas: latent-space analysis of whole-slide histology images.
# Usage: `make demo`, or `snakemake --cores N --workflow-profile profiles/default`.
from snakemake.utils import min_version

min_version("9.19")  # profiles/*/profile.yaml are read from 9.19 on


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/umap.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/mosaic.smk"
include: "workflow/rules/saliency.smk"
include: "workflow/rules/atlas.smk"


rule all:
    default_target: True
    input:
        final_targets(),


# The per-slide qc table (results/{cohort}/qc/slides.csv) is written when a run ends,
# whether every job succeeded or some failed (--keep-going).
onsuccess:
    write_qc()


onerror:
    write_qc()
