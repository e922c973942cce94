"""Production monitoring and continuous learning: ``python -m monitoring check | watch | simulate``.

Drift and accuracy per window of the production log, Evidently reports, the retrain trigger and a
traffic simulator. Imports no torch and no training code.
"""
