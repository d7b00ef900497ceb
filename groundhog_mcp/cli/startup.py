"""Start-up without cyclic garbage collection.

Starting ``groundhog-mcp`` creates some 160,000 objects that live as long as the process (the
modules and pydantic models of the MCP SDK and of the server). While they are created, CPython's
cyclic collector runs about 240 times over the growing heap (~55 ms of CPU here) and finds almost
nothing to free (~2,000 objects). So the program pauses it until it is ready to serve, and then
collects as usual. Reference counting frees everything else meanwhile.

When it resumes, start-up's objects go straight into the oldest generation (``gc.freeze()`` then
``gc.unfreeze()``: no traversal). Left in the youngest, the first two young collections walked
all of them (~60 ms of CPU each, on the first requests: a client that starts a process per call
paid them on every call); now only the first full collection does, once, as it did before. Not
``gc.freeze()`` alone: a frozen start-up left every later full collection with almost no
long-lived objects to weigh, and ``get_state`` answered ~4 % slower.

Only the program does this (``groundhog_mcp.cli.main()`` without arguments, as the console
script and ``python -m groundhog_mcp`` call it); a process that calls ``main(argv)`` is left alone.
"""

from __future__ import annotations

import gc

__all__ = ["pause_collection", "resume_collection"]

_paused = False


def pause_collection() -> None:
    """Stop cyclic collection until :func:`resume_collection` (a no-op if it is already off)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume_collection() -> None:
    """Start-up is over: collect again (a no-op unless paused here)."""
    global _paused
    if _paused:
        _paused = False
        # Start-up's objects straight into the oldest generation, untraversed (unfreeze puts the
        # frozen ones there); otherwise the young collections that follow walk all of them twice.
        gc.freeze()
        gc.unfreeze()
        gc.enable()
