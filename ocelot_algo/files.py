"""Writing a file so that a reader never sees half of it: write a temporary file beside it, then rename."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def replace_atomically(path: str | Path, write: Callable[[Path], object]) -> None:
    """`write(temporary_path)` fills the file; it then replaces `path` in one step, or nothing happens."""
    path = Path(path)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temp))
        os.chmod(temp, 0o644)  # mkstemp's 0600 would hide the file from another user (the container's)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: bytes | str) -> None:
    replace_atomically(path, lambda temp: temp.write_bytes(data.encode() if isinstance(data, str) else data))
