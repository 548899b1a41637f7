"""`wscswap live`: swap faces from a camera (or any OpenCV source) in real time.

With a display, frames are shown in a window (q or Esc quits) and, with ``output``, also written.
Without a display (no DISPLAY/WAYLAND_DISPLAY, or a headless OpenCV whose imshow is not
implemented) the stream goes to ``output``, which is then required. Frames go through the model
one at a time (batch 1, lowest latency), with detection every k frames and tracking between.
"""
from __future__ import annotations

import os
import sys

WINDOW = "wscswap live (q to quit)"


def has_display() -> bool:
    """Whether a preview window can be shown."""
    import cv2

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error:  # headless OpenCV: highgui not implemented
        return False
    return True


def run_live(swapper, camera="0", output: str | None = None, max_frames: int = 0, display: bool | None = None,
             progress: bool = True):
    """Swap the stream of ``camera`` (an index such as "0", a file or a URL). Returns SwapStats."""
    import cv2

    from .video import VideoSink, VideoSource, run_pipeline

    show = has_display() if display is None else display
    if not show and not output:
        raise ValueError("no display to show the preview (headless OpenCV or no DISPLAY): give --output FILE.mp4")
    source = VideoSource(str(camera), "camera")
    sink = None
    try:
        if output:
            sink = VideoSink(output, source.fps, (source.width, source.height))
        quit_flag = {"quit": False}

        def show_frame(frame):
            cv2.imshow(WINDOW, frame)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                quit_flag["quit"] = True

        stats = run_pipeline(swapper, source, sink, progress=progress, max_frames=max_frames, batch_frames=1,
                             on_frame=show_frame if show else None, should_stop=lambda: quit_flag["quit"])
        if sink is not None:
            if stats.frames == 0:
                sink.abort()
                raise ValueError(f"camera {camera} gave no frames")
            sink.finish()
        return stats
    finally:
        source.close()
        if show:
            cv2.destroyAllWindows()
