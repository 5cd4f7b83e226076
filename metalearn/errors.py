"""The one exception type for mistakes a user can fix (config, data files, command line).

Entry points print it as a single line and exit with status 2; anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """A bad config value, a missing or corrupt file, or a bad command-line argument."""
