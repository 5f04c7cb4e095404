"""The one exception type users see: a message they can act on."""


class HearflowError(Exception):
    """An error caused by the user's input (a file, an option, a checkpoint).

    The CLI prints its message as one line and exits with a non-zero status;
    library users catch it like any exception.
    """


def option(flag: str, argument: str) -> str:
    """How a message names one choice for both audiences, the command line and Python:
    ``option("--allow-silent", "allow_silent=True")`` is ``--allow-silent (Python: allow_silent=True)``."""
    return f"{flag} (Python: {argument})"


class Problems:
    """The problems found by checks made before work starts, raised together as one HearflowError.

    ``problems = Problems("training cannot start")``; ``problems.add(message)`` or
    ``value = problems.attempt(make, ...)`` (``make``'s HearflowError becomes a problem and
    the value None); ``problems.raise_any()`` raises one line: the message itself when
    there is one problem, else ``"WHAT, N problems: (1) ...; (2) ..."``.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.found: list[str] = []

    def add(self, message: str) -> None:
        self.found.append(message)

    def attempt(self, make, *args, **kwargs):
        try:
            return make(*args, **kwargs)
        except HearflowError as error:
            self.add(str(error))
            return None

    def raise_any(self) -> None:
        if len(self.found) == 1:
            raise HearflowError(self.found[0])
        if self.found:
            numbered = "; ".join(f"({number}) {problem}" for number, problem in enumerate(self.found, start=1))
            raise HearflowError(f"{self.what}, {len(self.found)} problems: {numbered}")
