"""The two kinds of user error: a configuration value or a data file that cannot be used.

The command line turns either into one line on stderr and exit code 2.
"""


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


class DataError(ValueError):
    """A data file that cannot be used; the message names the file, row or column."""
