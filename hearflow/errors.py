"""The one exception type users see: a message they can act on."""


class HearflowError(Exception):
    """An error caused by the user's input (a file, an option, a checkpoint).

    The CLI prints its message as one line and exits with a non-zero status;
    library users catch it like any exception.
    """
