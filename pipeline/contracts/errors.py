"""The one error type a user can cause (bad data, bad params, bad requests).

Stages catch it in ``main()`` and exit with status 2 and the message alone, no traceback.
"""


class MlcycleError(Exception):
    """Bad input: the message names the column, key or field, the value seen, what was expected."""
