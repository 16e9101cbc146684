"""One job's deadline, shared by every stage: downloads, staging, ComfyUI calls, execution,
output fetch and delivery each ask it how much time is left and bound their waits by it.

Only the cold boot of ComfyUI does not count: `extend` adds the time a job spent waiting
for ComfyUI to start (the first job of a container, or after a restart).
"""

from __future__ import annotations

import time

from comfy.errors import JobTimeout

TIMEOUT_HINT = "raise timeout_s in the job input or COMFY_JOB_TIMEOUT_S"


class Deadline:
    """The moment a job must be done by (monotonic clock), and how it was set."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._at = time.monotonic() + limit_s

    @property
    def at(self) -> float:
        return self._at

    def remaining(self) -> float:
        """Seconds left, never below 0."""
        return max(0.0, self._at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self._at

    def bound(self, timeout_s: float) -> float:
        """`timeout_s`, or less if the deadline comes first."""
        return min(timeout_s, self.remaining())

    def extend(self, seconds: float) -> None:
        """Move the deadline out (by the time spent waiting for ComfyUI's cold boot)."""
        self._at += max(0.0, seconds)

    def exceeded(self, doing: str) -> JobTimeout:
        """The error for a job whose time ran out while it was `doing` something."""
        return JobTimeout(
            f"the job did not finish within {self.limit_s:g} s (it was {doing})",
            details={"timeout_s": self.limit_s, "stage": doing, "hint": TIMEOUT_HINT},
        )
