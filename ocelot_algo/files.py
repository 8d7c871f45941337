"""Writing files so that a reader never sees half of one (write temporary files beside them, then rename), and
the type checks of values read back from JSON files."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

Writer = Callable[[Path], object]  # fills the temporary file at the given path


def write_all_or_nothing(folder: str | Path, files: list[tuple[str, Writer]]) -> None:
    """Write each (name, write) to a temporary file in `folder`, flushed to disk, then rename all into place in
    order (put the file readers look for last).

    On any failure every temporary file and every file already renamed by this call is removed, so a reader
    never finds a partial result (a file renamed over an older one of the same name cannot be restored)."""
    folder = Path(folder)
    staged: list[tuple[str, Path]] = []
    placed: list[Path] = []
    try:
        for name, write in files:
            handle, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
            os.close(handle)
            staged.append((name, Path(temp)))
            write(Path(temp))
            os.chmod(temp, 0o644)  # mkstemp's 0600 would hide the file from another user (the platform's reader)
            descriptor = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        for name, temp in staged:
            os.replace(temp, folder / name)
            placed.append(folder / name)
    except BaseException:
        for path in [temp for _, temp in staged] + placed:
            path.unlink(missing_ok=True)
        raise


def replace_atomically(path: str | Path, write: Writer) -> None:
    """`write(temporary_path)` fills the file; it then replaces `path` in one step, or nothing happens."""
    path = Path(path)
    write_all_or_nothing(path.parent, [(path.name, write)])


def write_atomic(path: str | Path, data: bytes | str) -> None:
    replace_atomically(path, lambda temp: temp.write_bytes(data.encode() if isinstance(data, str) else data))


def is_int(value: object) -> bool:
    """An integer as JSON gives one; a bool is not one, though Python counts it as an int."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An integer or a float (numpy's float64 included), not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
