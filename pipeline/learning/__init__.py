"""The learning library: models, transforms, training, attacks, calibration, metrics, plots,
tracking, the gate's rules and the model card, and the stage runner.

Only the DVC stages (``pipeline/<stage>.py``), ``pipeline/registry.py`` and ``bench/`` import
it; the service and the monitor never do (``tests/unit/test_layers.py``).
"""
