"""Atomic file writes: a kill or an exception at any moment leaves the previous file intact."""
import os
import tempfile

__all__ = ["atomic_write", "TMP_SUFFIX"]

TMP_SUFFIX = ".tmp"
_TMP_SUFFIX = TMP_SUFFIX


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write_fn, mode="wb"):
    """Write ``path`` via ``write_fn(file)`` into a temporary file in the same folder, fsync, then
    ``os.replace`` it over ``path`` (and fsync the folder). On an exception the temporary file is removed
    and ``path`` is untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.{os.getpid()}.", suffix=_TMP_SUFFIX)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def _read_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import (os.umask is process-wide)
