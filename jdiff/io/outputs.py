"""Writing output files: what is checked before the work starts, and how files are written.

Everything that can fail cheaply is checked before any model runs: the suffix, whether the directory can be
created and written (by writing a probe file there, which also catches read-only file systems and root's
exemption from permission bits), and for .mp4 whether imageio-ffmpeg has an ffmpeg to call. Files are then
written to a temporary name in the same directory and renamed, so a reader never sees half a file, with the
mode the process's umask asks for (`tempfile.mkstemp` alone creates 0600). Any OSError while writing becomes
an `OutputError`: one line on the command line (exit 2), naming the path.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from jdiff.errors import OutputError

IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
VIDEO_SUFFIXES = {".mp4": "mp4"}

_umask_lock = threading.Lock()


def umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux: /proc/self/status).

    Elsewhere it is read by setting and restoring it under a lock; another thread creating a file in that
    instant could still see the temporary value, which is why /proc is tried first.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from `open()` under the current umask (0644 under the usual 022)."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """The mode a new directory gets from `mkdir` under the current umask (0755 under the usual 022)."""
    return 0o777 & ~umask()


def check_output_file(path: str | os.PathLike, suffixes: dict[str, str]) -> Path:
    """Checks that `path` can be written as one of `suffixes`, before any work is done.

    Creates the directory if needed (as saving would) and writes and removes a probe file there.

    Raises:
        OutputError: unknown suffix, a directory in the way, an unwritable directory, no mp4 writer.
    """
    p = check_suffix(path, suffixes)
    if p.is_dir():
        raise OutputError(f"output {p} is a directory; give a file name, e.g. {p / ('output' + p.suffix)}")
    check_writable_dir(p.parent, f"output {p}")
    if p.suffix.lower() in VIDEO_SUFFIXES:
        check_video_writer()
    return p


def check_suffix(path: str | os.PathLike, suffixes: dict[str, str]) -> Path:
    """`path` as a Path when its suffix is one of `suffixes` (the formats this model's outputs can take)."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        kind = ""
        if p.suffix.lower() in VIDEO_SUFFIXES and suffixes is IMAGE_SUFFIXES:
            kind = "this model makes images; "
        elif p.suffix.lower() in IMAGE_SUFFIXES and suffixes is VIDEO_SUFFIXES:
            kind = "this model makes videos; "
        raise OutputError(f"output {p} has suffix {p.suffix!r}; {kind}use one of {sorted(suffixes)}")
    return p


def check_writable_dir(directory: str | os.PathLike, what: str) -> Path:
    """Proves that files can be created in `directory` (`what` names the output, for the message).

    A probe file is written and removed in `directory`, or, while it does not exist yet, in its nearest
    existing ancestor (where it would be created): no directory is made here, so a request that fails later
    leaves nothing behind.

    Raises:
        OutputError: a file where a directory is needed, or a directory that cannot be written.
    """
    d = Path(directory).absolute()
    existing = d
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write {what}: {existing} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".jdiff-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(
            f"cannot write {what}: cannot create files in {existing} ({e.strerror or e}); "
            "choose another location or fix its permissions"
        ) from None
    return d


def check_video_writer() -> None:
    """mp4 files are written by imageio through imageio-ffmpeg's ffmpeg binary; fails when either is missing.

    Without it imageio falls back to another plugin and fails only after the generation (a TIFF writer that
    takes no `fps`).
    """
    try:
        import imageio.v2  # noqa: F401
        import imageio_ffmpeg
    except ImportError as e:
        raise OutputError(
            f"writing .mp4 needs imageio and imageio-ffmpeg ({e}); install them: pip install imageio imageio-ffmpeg"
        ) from None
    try:
        imageio_ffmpeg.get_ffmpeg_exe()
    except (RuntimeError, OSError) as e:
        raise OutputError(
            f"writing .mp4 needs an ffmpeg binary and imageio-ffmpeg found none ({e}); "
            "pip install --force-reinstall imageio-ffmpeg, or set IMAGEIO_FFMPEG_EXE to an ffmpeg executable"
        ) from None


def write_atomic(path: Path, write: Callable[[str], None]) -> str:
    """`write(tmp)` writes the file at a temporary name in `path`'s directory, which is then given the umask's
    mode and renamed to `path`. On failure nothing is left behind.

    Raises:
        OutputError: any OSError on the way (disk full, permissions, a vanished directory).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {_reason(e)}") from None
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {_reason(e)}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return str(path)


def _reason(e: OSError) -> str:
    """An OSError as one line: its message and the file it names."""
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror or e}{where}"


def default_output_name(prompt: str, seed: int, suffix: str) -> Path:
    """`outputs/<slug>-<seed><suffix>`: the prompt's ASCII words, plus a short hash of the whole prompt when the
    slug does not carry all of it (non-ASCII text, or longer than 48 characters), so different prompts never
    share a file name."""
    import hashlib
    import re

    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    whole = slug.replace("-", "") == re.sub(r"[\s\W_]+", "", prompt.lower()) and len(slug) <= 48
    if not whole or not slug:
        digest = hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:8]
        slug = f"{slug[:40].strip('-')}-{digest}" if slug else f"prompt-{digest}"
    return Path("outputs") / f"{slug}-{seed}{suffix}"


__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "check_output_file",
    "check_suffix",
    "check_video_writer",
    "check_writable_dir",
    "default_output_name",
    "dir_mode",
    "file_mode",
    "umask",
    "write_atomic",
]
