"""Atomic file writes: a temp file in the destination folder, then a rename, so a reader (or a
crash) never sees a partial file."""
import os
import tempfile


def atomic_write_bytes(path, data: bytes) -> None:
    """Write data to path through a temp file beside it (removed if anything fails)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".wscswap-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
