"""Progress bars: tqdm's on a terminal; in a log file (cluster jobs, CI: stderr is not a terminal) no
carriage-return redraws, only a plain status line at most every 30 s."""

import sys
import time

from tqdm import tqdm


class StatusLines:
    """A file for tqdm that turns its redraws ("\\r" + status) into whole lines, at most one every 30 s."""

    def __init__(self):
        self.last = time.monotonic()  # the first line after 30 s: a short task prints none

    def write(self, text: str) -> None:
        if (text := text.strip("\r\n ")) and time.monotonic() - self.last >= 30:
            self.last = time.monotonic()
            sys.stderr.write(text + "\n")

    def flush(self) -> None:
        sys.stderr.flush()


def progress(*args, **kwargs) -> tqdm:
    """tqdm(*args, **kwargs), redrawn in place only on a terminal."""
    return tqdm(*args, **kwargs) if sys.stderr.isatty() else tqdm(*args, **kwargs, file=StatusLines(), ncols=100)
