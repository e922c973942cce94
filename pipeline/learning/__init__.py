"""The learning library: models, transforms, training, attacks, calibration, metrics, plots, the
task types' network side (``tasks/``) and data side (``targets``), schema inference, and the
stage runner.

Only the DVC stages (``pipeline/<stage>.py``) and ``bench/`` import it; the service and the
monitor never do (``tests/unit/test_layers.py``).
"""
