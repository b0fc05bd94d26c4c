# Reads its sample from the per-slide files through the dataset's virtual features.h5 (which
# lists them in sheet order): one input, not one per slide, keeps the DAG small.
rule fit_umap:
    input:
        features=paths.DATASET["features"],
    output:
        model=paths.UMAP_FIT_MODEL,
        sample=paths.UMAP_FIT_SAMPLE,
    log:
        "logs/fit_umap/{cohort}.log",
    benchmark:
        "logs/fit_umap/{cohort}.benchmark.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 2
    params:
        n_neighbors=lookup(dpath="umap/n_neighbors", within=config),
        min_dist=lookup(dpath="umap/min_dist", within=config),
        metric=lookup(dpath="umap/metric", within=config),
        max_tiles_per_slide=lookup(dpath="umap/max_tiles_per_slide", within=config),
        max_fit_tiles=lookup(dpath="umap/max_fit_tiles", within=config),
        pca_dim=lookup(dpath="umap/pca_dim", within=config),
        seed=lookup(dpath="umap/seed", within=config),
    script:
        "../scripts/fit_umap.py"


# One job per shard of umap.shard_slides slides (sheet order); group them on a cluster with
# --groups project_umap=project --group-components project=N (see the README).
rule project_umap:
    input:
        h5=shard_h5_files,
        model=umap_map_file,
        sample=umap_fit_sample,
    output:
        shard=paths.UMAP_SHARD,
    log:
        "logs/project_umap/{cohort}/{shard}.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        slides=shard_slides,
    script:
        "../scripts/project_umap.py"


rule gather_umap:
    input:
        shards=umap_shard_files,
        model=umap_map_file,
    output:
        umap=paths.UMAP_MODEL,
        coords=paths.UMAP_COORDS,
    log:
        "logs/gather_umap/{cohort}.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        reference=lookup(dpath="umap/reference", within=config),
    script:
        "../scripts/gather_umap.py"
