"""Video in and out with OpenCV, and the threaded swap pipeline.

reader thread (decode) -> faces thread (detect every k frames / track, smooth, select) -> worker
(align, model, paste, a batch of frames at a time) -> writer thread (encode), joined by bounded
queues. Decoding, detection, the model and encoding overlap without holding the video in memory:
detection does not depend on the model's output, so frame i+1's faces are found while frame i's
batch is in the generator. The writer writes a temp file beside
the output; at the end the audio is copied in with ffmpeg when it is on PATH (otherwise a
warning), the provenance comment is added to the MP4, and the file is renamed into place.
"""
from __future__ import annotations

import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import warnings

import numpy as np

from .profile import StageProfile
from .provenance import VIDEO_SUFFIXES, tag_file_in_place

VIDEO_INPUT_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv")
_END = object()


def is_video_path(path: str) -> bool:
    """By suffix: is this a video (else an image)?"""
    return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_INPUT_SUFFIXES


class VideoSource:
    """An opened cv2.VideoCapture with its fps, size and (for files) frame count."""

    def __init__(self, source, what: str = "video"):
        import cv2

        if isinstance(source, str) and not source.isdigit() and "://" not in source:
            if not os.path.isfile(source):
                raise FileNotFoundError(f"{what} not found: {source}")
        self.name = source
        self.cap = cv2.VideoCapture(int(source) if isinstance(source, str) and source.isdigit() else source)
        if not self.cap.isOpened():
            raise ValueError(f"{what} {source} could not be opened for reading")
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS)) or 30.0
        self.width = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.frame_count = max(0, int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT)))

    def read(self):
        ok, frame = self.cap.read()
        return frame if ok else None

    def close(self):
        self.cap.release()


class VideoSink:
    """Frames -> a temp video beside ``path``; ``finish()`` adds audio and the tag, then renames.
    ``abort()`` removes the temp file: nothing partial is left at ``path``."""

    def __init__(self, path: str, fps: float, size: tuple[int, int], audio_from: str | None = None):
        import cv2

        suffix = os.path.splitext(path)[1].lower()
        if suffix not in VIDEO_SUFFIXES:
            raise ValueError(f"output video must end in one of {VIDEO_SUFFIXES}, got {path!r}")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"output folder does not exist: {folder}")
        try:
            fd, self.tmp = tempfile.mkstemp(prefix=".wscswap-", suffix=suffix, dir=folder)
        except OSError as e:
            raise PermissionError(f"output {path} cannot be written: {e.strerror}") from None
        os.close(fd)
        self.path, self.fps, self.size, self.audio_from = path, fps, size, audio_from
        self.writer = cv2.VideoWriter(self.tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            self.abort()
            raise ValueError(f"OpenCV cannot write an mp4v video to {path}")
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(frame)
        self.frames += 1

    def finish(self, tag: bool = True) -> None:
        self.writer.release()
        try:
            if self.audio_from is not None:
                copy_audio(self.audio_from, self.tmp)
            if tag:
                tag_file_in_place(self.tmp)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if getattr(self, "writer", None) is not None:
            self.writer.release()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def copy_audio(src: str, video: str) -> bool:
    """Mux ``src``'s audio (if any) into ``video`` in place with ffmpeg (stream copy).
    Without ffmpeg on PATH: a warning, and the video stays silent. Returns whether it ran."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        warnings.warn("ffmpeg is not on PATH: the output video has no audio (install ffmpeg to copy the "
                      "source's audio track)", stacklevel=2)
        return False
    folder = os.path.dirname(os.path.abspath(video))
    fd, muxed = tempfile.mkstemp(prefix=".wscswap-mux-", suffix=os.path.splitext(video)[1], dir=folder)
    os.close(fd)
    cmd = [ffmpeg, "-y", "-loglevel", "error", "-i", video, "-i", src, "-map", "0:v:0", "-map", "1:a?",
           "-c", "copy", "-shortest", muxed]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        os.unlink(muxed)
        warnings.warn(f"ffmpeg could not copy the audio ({result.stderr.strip()[:200]}); the output has none",
                      stacklevel=2)
        return False
    os.replace(muxed, video)
    return True


def _reader(source: VideoSource, q: queue.Queue, profile: StageProfile, stop: threading.Event,
            errors: list, max_frames: int) -> None:
    try:
        n = 0
        while not stop.is_set() and (max_frames <= 0 or n < max_frames):
            with profile.stage("decode"):
                frame = source.read()
            if frame is None:
                break
            _put(q, frame, stop)
            n += 1
    except BaseException as e:  # reported by the main thread
        errors.append(e)
    finally:
        _put(q, _END, stop)


def _writer(sink: VideoSink, q: queue.Queue, profile: StageProfile, errors: list) -> None:
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            with profile.stage("encode"):
                sink.write(item)
    except BaseException as e:
        errors.append(e)
        while q.get() is not _END:  # keep draining so the worker never blocks
            pass


def _faces(swapper, tracker, q_in: queue.Queue, q_mid: queue.Queue, profile: StageProfile,
           stop: threading.Event, errors: list) -> None:
    try:
        while True:
            item = q_in.get()
            if item is _END:
                return
            _put(q_mid, (item, swapper.find_faces(item, tracker, profile)), stop)
            if stop.is_set():
                return
    except BaseException as e:
        errors.append(e)
    finally:
        _put(q_mid, _END, stop)  # the worker stops at this; run_pipeline drains q_in for the reader


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    while True:
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            if stop.is_set() and item is not _END:
                return


def run_pipeline(swapper, source: VideoSource, sink: VideoSink | None, *, progress: bool = True,
                 max_frames: int = 0, on_frame=None, batch_frames: int | None = None,
                 should_stop=None):
    """Swap every frame of ``source`` into ``sink`` with reader/worker/writer threads.

    on_frame(frame) is called in the calling thread after each frame is rendered (live preview);
    should_stop() is polled between batches. Returns SwapStats. On any error the sink is aborted.
    """
    from tqdm import tqdm

    from .swapper import SwapStats

    o = swapper.options
    batch_frames = batch_frames or o.batch_frames
    stats = SwapStats()
    prof = stats.profile
    if swapper.device.type == "cuda":
        import torch

        prof._sync = lambda: torch.cuda.synchronize(swapper.device)
    q_in, q_mid, q_out = (queue.Queue(o.queue_size) for _ in range(3))
    stop, errors = threading.Event(), []
    tracker = swapper.tracker(source.fps)
    total = source.frame_count if source.frame_count else None
    if total and max_frames > 0:
        total = min(total, max_frames)
    bar = tqdm(total=total, unit="frame", desc="wscswap", disable=not progress, dynamic_ncols=True)
    threads = [threading.Thread(target=_reader, args=(source, q_in, prof, stop, errors, max_frames), daemon=True),
               threading.Thread(target=_faces, args=(swapper, tracker, q_in, q_mid, prof, stop, errors), daemon=True)]
    writer = None
    if sink is not None:
        writer = threading.Thread(target=_writer, args=(sink, q_out, prof, errors), daemon=True)
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    if writer is not None:
        writer.start()
    ok = False
    try:
        done = False
        while not done and not errors:
            frames, faces = [], []
            while len(frames) < batch_frames:
                item = q_mid.get()
                if item is _END:
                    done = True
                    break
                frames.append(item[0])
                faces.append(item[1])
            if frames:
                outs = swapper.render_batch(frames, faces, prof)
                for out, f in zip(outs, faces):
                    stats.frames += 1
                    stats.faces_swapped += len(f)
                    stats.frames_without_face += int(not f)
                    if writer is not None:
                        _put(q_out, out, stop)
                    if on_frame is not None:  # in this (the main) thread: GUI toolkits want that
                        on_frame(out)
                bar.update(len(frames))
                elapsed = time.perf_counter() - t0
                bar.set_postfix(fps=f"{stats.frames / elapsed:.1f}", refresh=False)
            if should_stop is not None and should_stop():
                done = True
        ok = not errors
    finally:
        stop.set()
        if writer is not None:
            _put(q_out, _END, threading.Event())
            writer.join()
        for t in threads:  # unblock them if they wait on a full queue
            while t.is_alive():
                for q in (q_in, q_mid):
                    try:
                        q.get_nowait()
                    except queue.Empty:
                        pass
                t.join(timeout=0.05)
        bar.close()
        prof.frames = stats.frames
        prof.wall = time.perf_counter() - t0
        if not ok and sink is not None:
            sink.abort()
    if errors:
        raise errors[0]
    return stats


def swap_video(swapper, src: str, dst: str, progress: bool = True, max_frames: int = 0):
    """Swap a video file into ``dst``; see :meth:`Swapper.swap_video`."""
    source = VideoSource(src, "target video")
    try:
        if source.width <= 0 or source.height <= 0:
            raise ValueError(f"target video {src} has no readable frames")
        sink = VideoSink(dst, source.fps, (source.width, source.height), audio_from=src)
        stats = run_pipeline(swapper, source, sink, progress=progress, max_frames=max_frames)
        if stats.frames == 0:
            sink.abort()
            raise ValueError(f"target video {src} has no readable frames")
        with stats.profile.stage("encode"):
            sink.finish()
        return stats
    finally:
        source.close()
