"""The REST service over the champion model and its production log (no torch in here)."""
