"""Progress bars only where someone watches them: on a terminal.

tqdm redraws with carriage returns and, for nested bars, cursor-movement escape codes; in a
log file (stderr redirected, CI) that is noise. Every deepcd bar asks `bars_enabled` first;
DEEPCD_PROGRESS=1 forces bars on, DEEPCD_PROGRESS=0 off.
"""

from __future__ import annotations

import os
import sys


def bars_enabled(progress: bool = True) -> bool:
    """True when a progress bar should be drawn: asked for, and stderr is a terminal."""
    if not progress:
        return False
    forced = os.environ.get("DEEPCD_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
