"""The process's resident memory and its high-water mark, from /proc/self/status.

The kernel keeps one high-water mark per process (``VmHWM``); writing ``5`` to
``/proc/self/clear_refs`` resets it to the resident memory now. A block's host peak is
read by resetting the mark as it opens and reading it as it closes, crediting every open
block before each reset so nested blocks are each right. Under ``memwarden run`` the mark
is never reset: the runner reads it as the process's peak. There a block's peak is the
mark when the block raised it, else the larger of the resident memory at its ends (a
lower bound), and the figures say so.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple


def _status() -> Tuple[Optional[int], Optional[int]]:
    rss = hwm = None
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, hwm


def under_memwarden_run() -> bool:
    """Whether a memwarden runner measures this process (it reads the high-water mark)."""
    return "MEMWARDEN_RUN_ID" in os.environ


def _reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


class Block:
    """One open block's host figures."""

    def __init__(self, rss: Optional[int], hwm: Optional[int], resettable: bool) -> None:
        self.rss_at_entry = rss
        self.hwm_at_entry = hwm
        self.resettable = resettable
        self.peak = rss or 0
        self.exact = resettable


class HostMarks:
    """Open blocks over the process's one high-water mark."""

    def __init__(self) -> None:
        self._open: List[Block] = []

    def _credit(self, hwm: Optional[int]) -> None:
        for block in self._open:
            if block.resettable and hwm is not None:
                block.peak = max(block.peak, hwm)

    def enter(self) -> Block:
        rss, hwm = _status()
        resettable = not under_memwarden_run()
        if resettable:
            self._credit(hwm)
            resettable = _reset()
            if resettable:
                rss, hwm = _status()
        block = Block(rss, hwm, resettable)
        self._open.append(block)
        return block

    def leave(self, block: Block) -> Tuple[Optional[int], bool]:
        """Closes `block`: its peak resident memory, and whether that is the kernel's mark
        (exact) rather than a lower bound."""
        rss, hwm = _status()
        if block.resettable:
            self._credit(hwm)
        else:
            raised = hwm is not None and block.hwm_at_entry is not None and hwm > block.hwm_at_entry
            if raised:
                block.peak = max(block.peak, hwm or 0)
                block.exact = True
            block.peak = max(block.peak, rss or 0)
        self._open = [b for b in self._open if b is not block]
        return (block.peak or None), block.exact


HOST = HostMarks()
