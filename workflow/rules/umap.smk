rule fit_umap:
    input:
        unpack(dataset_inputs),
        reference=umap_reference,
    output:
        umap="results/{cohort}/umap/umap.joblib",
        coords="results/{cohort}/umap/coords.parquet",
    log:
        "logs/fit_umap/{cohort}.log",
    benchmark:
        "logs/fit_umap/{cohort}.benchmark.tsv"
    conda:
        "../../envs/analysis.yaml"
    threads: 2
    params:
        umap=lookup(dpath="umap", within=config),
    script:
        "../scripts/fit_umap.py"
