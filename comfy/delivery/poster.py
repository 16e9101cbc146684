"""A poster frame for a video output: its first frame as a JPEG.

The worker's own virtualenv has no video decoder, but ComfyUI's has PyAV (its video nodes
need it), so the frame is decoded by a short run of ComfyUI's Python (COMFY_PYTHON):
about 0.2 s per video. A poster is a convenience: when it cannot be made (no PyAV, a
format PyAV cannot read) the video is delivered without one and the reason is logged.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

log = logging.getLogger("comfy.delivery.poster")

POSTER_TIMEOUT_S = 60.0
POSTER_CONTENT_TYPE = "image/jpeg"

# Run by ComfyUI's Python: decode the first video frame, save it as JPEG.
_SCRIPT = """
import sys
import av
source, dest = sys.argv[1], sys.argv[2]
with av.open(source) as container:
    stream = next(s for s in container.streams if s.type == "video")
    frame = next(container.decode(stream))
    frame.to_image().convert("RGB").save(dest, "JPEG", quality=85)
"""

_without_pyav: set[str] = set()  # interpreters found to lack PyAV: not asked again


def make_poster(video: Path, dest: Path, python: str, timeout_s: float = POSTER_TIMEOUT_S) -> Path | None:
    """Write the first frame of `video` to `dest` as JPEG; None (logged) if that cannot be done."""
    if python in _without_pyav:
        return None
    try:
        done = subprocess.run([python, "-c", _SCRIPT, str(video), str(dest)],
                              capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("no poster for %s: %s", video.name, exc)
        return None
    if done.returncode != 0 or not dest.is_file():
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        if "No module named 'av'" in reason:
            _without_pyav.add(python)
            reason += f" (COMFY_PYTHON={python} has no PyAV; posters are off for it)"
        log.warning("no poster for %s: %s", video.name, reason)
        dest.unlink(missing_ok=True)
        return None
    return dest
