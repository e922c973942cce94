"""The release layer: the gate's rules, the model card, the MLflow tracker and the publication of
a candidate (registry version, drift reference, promotion).

Torch-free (``tests/unit/test_layers.py``): it reads the figures the learning library measured
and never imports it. The evaluate stage and ``pipeline/registry.py`` use it; the service and
the monitor do not.
"""
