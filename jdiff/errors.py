"""Errors that users can act on.

`InputError` marks a problem with what the user asked for or pointed us at (bad sizes, missing files, corrupt
weights, impossible meshes). The CLI turns it into one line on stderr and exit code 2; the server into a 4xx.
Anything else escaping is a bug in jdiff and keeps its traceback.
"""


class InputError(ValueError):
    """A problem with the user's input, stated as: what was expected, what was got, what to do."""


class ConversionError(InputError):
    """Weights that do not fit the model: every problem is collected and reported together."""

    def __init__(self, component: str, problems: list[str]):
        self.component = component
        self.problems = list(problems)
        shown = "; ".join(self.problems[:20])
        more = f" (and {len(self.problems) - 20} more)" if len(self.problems) > 20 else ""
        super().__init__(f"{component}: {len(self.problems)} weight problem(s): {shown}{more}")


class OutputError(InputError):
    """An output that cannot be written: its directory, permissions, free space, or a missing writer (ffmpeg).

    An `InputError`, so the CLI prints it as one line (exit 2); the server, which chooses its own output paths,
    reports it as its own failure.
    """
