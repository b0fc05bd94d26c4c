rule fit_umap:
    input:
        unpack(dataset_inputs),
        reference=umap_reference,
    output:
        umap=paths.UMAP_MODEL,
        coords=paths.UMAP_COORDS,
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
        pca_dim=lookup(dpath="umap/pca_dim", within=config),
        seed=lookup(dpath="umap/seed", within=config),
        reference=lookup(dpath="umap/reference", within=config),
    script:
        "../scripts/fit_umap.py"
