"""``tabserve build``: a table (CSV/Parquet), plus optionally a fitted model or an ONNX file, to a sealed model version.

Stages, one module each: ``read`` (the file), ``spec`` (the optional TOML spec), ``infer`` (schema and the
refusals of bad input), ``table`` (normalised columns and splits), ``fit`` (train-for-me LightGBM), ``pickled``
(a fitted model, opened only in a child process), ``convert`` (any ONNX graph to the server's single float input),
``calibrate`` (split-conformal tables and test metrics), ``card`` and ``write`` (the folder), ``command``
(orchestration and progress). Imported lazily by the CLI only: the serving process never imports this package.
"""
