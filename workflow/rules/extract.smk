rule extract_activations:
    input:
        slide=slide_path,
        model=MODEL_INPUTS,
    output:
        h5=paths.SLIDE_H5,
    # the status file records the job's time and peak memory too (no per-slide benchmark:)
    log:
        log=paths.EXTRACT_LOG,
        status=paths.EXTRACT_STATUS,
    conda:
        MODEL_ENV
    threads: 4
    resources:
        gpu=1,
        # tiles per forward pass (0: per device); changes no result, so it is no param
        batch_size=BATCH_SIZE,
        # who decodes the tiles (tiles.reader); same pixels either way, so no param either
        reader=READER,
    params:
        model=MODEL_PARAM,
        model_files=MODEL_STAMP,
        trust_model_code=lookup(dpath="trust_model_code", within=config),
        px=lookup(dpath="tiles/px", within=config),
        um=lookup(dpath="tiles/um", within=config),
        stride_div=lookup(dpath="tiles/stride_div", within=config),
        otsu=lookup(dpath="tiles/otsu", within=config),
        tissue_fraction=lookup(dpath="tiles/tissue_fraction", within=config),
        grayspace_fraction=lookup(dpath="tiles/grayspace_fraction", within=config),
        grayspace_threshold=lookup(dpath="tiles/grayspace_threshold", within=config),
        whitespace_fraction=lookup(dpath="tiles/whitespace_fraction", within=config),
        whitespace_threshold=lookup(dpath="tiles/whitespace_threshold", within=config),
        allow_model_mismatch=lookup(dpath="tiles/allow_model_mismatch", within=config),
        layers=lookup(dpath="features/layers", within=config),
        pooling=lookup(dpath="features/pooling", within=config),
        include_preds=lookup(dpath="features/include_preds", within=config),
        precision=lookup(dpath="features/precision", within=config),
        mpp=slide_mpp,
    script:
        "../scripts/extract_activations.py"
