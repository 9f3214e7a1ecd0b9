"""The prediction log: every answer's record, from the worker's request path to Parquet batches on disk.

Four parts, one module each:

    wire.py     the record and the frame that carries records from a worker to its sidecar
    worker.py   the worker's side (`Offload`): buffers records, ships a frame every 50 ms, re-sends
                what a dead sidecar had not written (at-least-once), starts a new sidecar
    sidecar.py  the sidecar process (`python -m mlbox.serve.predlog.sidecar`): reads frames, runs
                the shadow models, reports counters, hands records to the writer
    writer.py   the Parquet writer (`PredictionLog`): Arrow batches every 50 ms, one immutable
                Parquet file per deployment per flush, cataloged in meta.db

A record's `entity` is a JSON array with one object per request row (the row's entity keys,
or its sticky key), so labels attach to rows, not only to requests.
"""
