"""The torch-free contracts: what the stages, the service and the monitor share.

errors, params (params.yaml sections), schema (schema.json), io (atomic outputs, JSON and
Parquet), runtime (onnxruntime helpers), champion (the champion directory's reader) and prodlog
(the production log's store). ``serving/`` and ``monitoring/`` import only this layer of
``pipeline``; ``tests/unit/test_layers.py`` fails if they import anything else.
"""
