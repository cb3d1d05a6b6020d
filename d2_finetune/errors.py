"""Errors caused by the user's input (a config, a dataset, a checkpoint, a command line).

The command-line tools report these as one short message without a traceback (``--debug`` shows
it); anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the file, key or value at fault and how to fix it."""


class ConfigError(UserError):
    pass


class DatasetError(UserError):
    pass


class CheckpointError(UserError):
    pass
