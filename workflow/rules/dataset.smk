rule merge_dataset:
    input:
        h5=cohort_h5_files,
        sheet=lookup(dpath="slides", within=config),
    output:
        **paths.DATASET,
    log:
        "logs/merge_dataset/{cohort}.log",
    conda:
        "../../envs/analysis.yaml"
    script:
        "../scripts/merge_dataset.py"
