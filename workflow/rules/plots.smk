rule plot_umap:
    input:
        unpack(dataset_inputs),
        coords=paths.UMAP_COORDS,
    output:
        png=report(
            paths.UMAP_PLOT,
            caption="../report/umap.rst",
            category="UMAP",
            labels={"label": "{label}"},
        ),
    log:
        "logs/plot_umap/{cohort}/{label}.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        n_clusters=n_clusters_for_label,
        seed=lookup(dpath="umap/seed", within=config),
    script:
        "../scripts/plot_umap.py"
