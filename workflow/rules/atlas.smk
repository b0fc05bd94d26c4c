rule build_atlas:
    input:
        unpack(dataset_inputs),
        unpack(atlas_saliency),
        coords=paths.UMAP_COORDS,
        mosaic=paths.MOSAIC_MANIFEST,
    output:
        # one folder, written atomically; `snakemake --report report.html` cannot embed a
        # folder, so the methods paragraph (workflow/report/workflow.rst) describes it
        atlas=directory(paths.ATLAS),
    log:
        "logs/build_atlas/{cohort}.log",
    benchmark:
        "logs/build_atlas/{cohort}.benchmark.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 4
    params:
        labels=atlas_labels(),
        tile_px=atlas_tile_px(),
        max_points=lookup(dpath="atlas/max_points", within=config),
        thumbnail_px=lookup(dpath="atlas/thumbnail_px", within=config),
        max_thumbnails=lookup(dpath="atlas/max_thumbnails", within=config),
        jpeg_quality=lookup(dpath="atlas/jpeg_quality", within=config),
        n_clusters=atlas_n_clusters(),
        seed=lookup(dpath="umap/seed", within=config),
        mosaic_cols=lookup(dpath="mosaic/num_tiles_x", within=config),
    script:
        "../scripts/build_atlas.py"
