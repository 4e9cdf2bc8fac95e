"""Stage modules. Each declares itself and the pipeline builds one node per stage and target from the
declarations with one generic mechanism (pipeline.py); `--explain` walks the very same nodes.

A stage module declares:
    NAME, VERSION       the stage (its cache directory) and the version of its code in the key
    LIBRARIES           distributions whose versions key its outputs
    OUTPUT              the file it writes (the artifact's main file, for a target stage)
    BASELINE            (optional) the fp32 baseline of the artifact's own format, when it writes one
    needs(params)       the inputs it reads, from stage_inputs.INPUTS: data ("model", "fp32", "calibration",
                        "evaluation", "reference", "host" ...) keys the node as a digest; values ("budget",
                        "threads", "io") key it as params
    build(inp, params, out_dir) -> meta   makes its outputs; `inp` hands out the declared inputs by name
A model stage (run once per build: prune, trace, reference) also declares spec_params(spec). A target stage
(it makes an artifact) also declares
    TABLE, SCHEMA       the target table it reads and its schema in options.SCHEMAS (types, defaults, values)
    params_for(table, path, prefix) -> params   the table checked against SCHEMA, defaults filled in
    applies(target)     whether it makes this target's artifact; formats.FORMATS lists the candidates per
                        (format, precision), the first that applies wins
and may declare extra_deps(params) -> dict for key inputs of its own (a side venv's lock), and CHILD_PROCESS = True
when its work runs in child processes (onnx2tf, a side venv): the pipeline then runs that target's nodes in a
second thread, concurrently with the other targets (Pipeline._run_nodes; TOOLCHAIN_SERIAL=1 turns it off).

A target stage writes its artifact without app metadata and is keyed on the graph and its options only; where its
format carries metadata (ONNX, TFLite), the metadata stage (metadata.py) follows it per target and stamps a copy
(inputs "converted", "conversion", "app_metadata"). That copy is the artifact validate judges and the build ships.
"""
