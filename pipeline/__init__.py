"""mlcycle's DVC stages and the pieces they share.

Each stage runs as ``python -m pipeline.<stage>``; ``dvc repro`` runs them all.
"""
