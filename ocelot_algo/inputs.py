"""Reading the challenge's inputs: everything checked up front, pixels read one pair at a time.

Two layouts, detected automatically:
- Grand-Challenge (what the container sees): `images/cell_patches/` and `images/tissue_patches/` with one image
  each that stacks all N pairs (one tall TIFF page, N TIFF pages, or a tall 2-D / 3-D .mha), and
  `metadata.json`, a list of the per-pair dicts in stacking order.
- Release (the downloaded dataset): `images/<split>/cell/NNN.jpg`, `images/<split>/tissue/NNN.jpg` and the
  release's `metadata.json` (a dict with `sample_pairs`).

`open_inputs` checks all it can without decoding pixels (folders, headers, shapes, pixel types, codecs, file
lengths, pair counts, every metadata entry), so a bad input fails in seconds, before any work and before any
output exists. Pixels are decoded per pair on `read(i)`, so memory does not grow with the number of pairs.
"""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import tifffile

from .files import is_number
from .geometry import PATCH_SIZE, Box, cell_box_in_tissue

log = logging.getLogger("ocelot_algo")

GC_SOCKETS = ("images/cell_patches", "images/tissue_patches")
STACK_SUFFIXES = (".tif", ".tiff", ".mha")
REQUIRED_NUMBERS = ("patch_x_offset", "patch_y_offset", "cell.resized_mpp_x", "cell.resized_mpp_y",
                    "tissue.resized_mpp_x", "tissue.resized_mpp_y")
SLIDE_BOX_KEYS = ("x_start", "y_start", "x_end", "y_end")  # optional; ends inclusive, in slide pixels
RGB_PHOTOMETRICS = (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.MINISBLACK)  # 3-4 samples either way


class InputError(Exception):
    """One line: which file, what is wrong."""


@dataclass(frozen=True)
class Pair:
    index: int  # position in stacking order (0-based): its output points are named image_<index>
    name: str  # "image_<index>" (Grand-Challenge) or the release id, e.g. "003"
    cell: np.ndarray  # (1024, 1024, 3) uint8 RGB, C-contiguous
    tissue: np.ndarray  # (1024, 1024, 3) uint8 RGB, C-contiguous
    meta: dict
    box: Box  # the cell field of view in the tissue patch, geometry.cell_box_in_tissue(meta)


class _Source(Protocol):
    """The pixels of one socket (all cell patches or all tissue patches)."""

    path: Path

    def __len__(self) -> int: ...

    def read(self, index: int) -> np.ndarray: ...  # (1024, 1024, 3 or 4) uint8

    def close(self) -> None: ...


class InputSet:
    """The validated pairs of one input folder; a context manager that closes its files."""

    def __init__(self, layout: str, pair_names: list[str], metas: list[dict], boxes: list[Box],
                 cell: _Source, tissue: _Source):
        self.layout = layout
        self.pair_names = tuple(pair_names)
        self.metas = tuple(metas)
        self.boxes = tuple(boxes)
        self._cell, self._tissue = cell, tissue

    def __len__(self) -> int:
        return len(self.pair_names)

    def __str__(self) -> str:
        return f"{len(self)} pairs, {self.layout} layout; cell {self._cell}; tissue {self._tissue}"

    def read(self, index: int) -> Pair:
        if not 0 <= index < len(self):
            raise IndexError(f"pair {index} out of range 0..{len(self) - 1}")
        return Pair(index, self.pair_names[index], _pair_pixels(self._cell, index),
                    _pair_pixels(self._tissue, index), self.metas[index], self.boxes[index])

    def __iter__(self) -> Iterator[Pair]:
        return (self.read(i) for i in range(len(self)))

    def close(self) -> None:
        self._cell.close()
        self._tissue.close()

    def __enter__(self) -> "InputSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pair_pixels(source: _Source, index: int) -> np.ndarray:
    """One pair's RGB patch; decoding errors (corrupt data past the headers) become InputError."""
    try:
        pixels = source.read(index)
    except InputError:
        raise
    except Exception as error:  # codecs raise many types; all mean "this file's data is broken"
        raise InputError(f"{source.path}: pair {index}: cannot decode pixels ({error})") from None
    return np.ascontiguousarray(pixels[..., :3])  # drops alpha


def open_inputs(input_dir: str | Path, split: str = "test") -> InputSet:
    """Open and validate an input folder of either layout (see module doc); `split` picks the release's subset."""
    root = Path(input_dir)
    if not root.is_dir():
        raise InputError(f"{root}: {'is a file, not a folder' if root.exists() else 'input folder does not exist'}")
    if any((root / socket).exists() for socket in GC_SOCKETS):
        inputs = _open_grand_challenge(root)
    elif (root / "images" / split / "cell").is_dir():
        inputs = _open_release(root, split)
    else:
        splits = sorted(p.parent.name for p in (root / "images").glob("*/cell") if p.is_dir())
        raise InputError(
            f"{root}: no inputs found; expected images/cell_patches/ + images/tissue_patches/ + metadata.json "
            f"(Grand-Challenge) or images/{split}/cell/ + images/{split}/tissue/ + metadata.json (release)"
            + (f"; this release folder has --split {' or '.join(splits)}" if splits else ""))
    log.info("inputs: %s", inputs)
    return inputs


# ------------------------------------------------------------------------------------------ Grand-Challenge


def _open_grand_challenge(root: Path) -> InputSet:
    metadata_path = root / "metadata.json"
    entries = _ordered_entries(metadata_path, _load_json(metadata_path))
    boxes = [_validated_box(entry, f"{metadata_path}: {label}") for label, entry in entries]
    with ExitStack() as on_error:
        cell, tissue = (on_error.enter_context(closing(_open_stack(_socket_image(root / s)))) for s in GC_SOCKETS)
        if not len(cell) == len(tissue) == len(entries):
            raise InputError(f"pair counts differ: {cell.path} holds {len(cell)} pairs, {tissue.path} "
                             f"{len(tissue)}, {metadata_path} {len(entries)}")
        on_error.pop_all()
    return InputSet("grand-challenge", [f"image_{i}" for i in range(len(entries))], [e for _, e in entries],
                    boxes, cell, tissue)


def _socket_image(folder: Path) -> Path:
    """The one image in a socket folder (GC keeps the uploaded file name, so any name goes)."""
    if not folder.is_dir():
        raise InputError(f"{folder}: socket folder missing (it should hold one .tif, .tiff or .mha image)")
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as error:
        raise InputError(f"{folder}: cannot list the socket folder ({error.strerror})") from None
    images = [p for p in files if p.suffix.lower() in STACK_SUFFIXES]
    if not images:
        found = f"found only {', '.join(p.name for p in files[:5])}" if files else "the folder is empty"
        raise InputError(f"{folder}: no .tif, .tiff or .mha image ({found})")
    if len(images) > 1:
        raise InputError(f"{folder}: {len(images)} images, expected exactly one: {', '.join(p.name for p in images)}")
    return images[0]


def _open_stack(path: Path) -> _Source:
    return _MhaStack(path) if path.suffix.lower() == ".mha" else _TiffStack(path)


def _check_pixels(path: Path, where: str, rows: int, width: int, channels: int, dtype: np.dtype | None,
                  type_name: str) -> None:
    """Shape and pixel-type rules shared by all stack formats (rows may stack several pairs)."""
    if channels not in (3, 4):
        kind = {1: "grayscale", 2: "grayscale + alpha"}.get(channels, "")
        raise InputError(f"{path}{where}: {channels} channel(s){f' ({kind})' if kind else ''}; "
                         "expected RGB (3) or RGBA (4)")
    if dtype != np.uint8:
        raise InputError(f"{path}{where}: {type_name} pixels; expected 8-bit (uint8) RGB")
    if width != PATCH_SIZE:
        raise InputError(f"{path}{where}: width {width}; expected {PATCH_SIZE}")
    if rows == 0 or rows % PATCH_SIZE:
        raise InputError(f"{path}{where}: height {rows} is not a positive multiple of {PATCH_SIZE}")


class _TiffStack:
    """Pairs stacked in one tall page, or one pair per page; reads only the bytes or segments of a pair."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._tif = tifffile.TiffFile(path)
            self._tif.pages.useframes = False  # full TiffPage objects, each with its own tags
            # parses every header now; reduced-resolution pages (thumbnails, pyramid levels) are not pairs
            self._pages: list[tifffile.TiffPage] = [page for page in self._tif.pages if not page.is_reduced]
        except Exception as error:  # tifffile raises TiffFileError, struct.error, ValueError, OSError, ...
            raise InputError(f"{path}: not a readable TIFF ({error})") from None
        try:
            if len(self._pages) == 1:
                self._pair_rows = [(0, row) for row in range(0, self._pages[0].imagelength, PATCH_SIZE)]
            else:
                self._pair_rows = [(page, 0) for page in range(len(self._pages))]
            for index, page in enumerate(self._pages):
                self._check_page(page, f" page {index}" if len(self._pages) > 1 else "")
            self._cache: dict[tuple[int, int], tuple] = {}  # decoded segments that reach into the next pair
        except InputError:
            self._tif.close()
            raise

    def _check_page(self, page: tifffile.TiffPage, where: str) -> None:
        separate, depth, rows, width, contig = page.shaped
        dtype = None if page.dtype is None else np.dtype(page.dtype)
        _check_pixels(self.path, where, rows, width, separate * contig, dtype,
                      str(dtype) if dtype is not None else f"{page.bitspersample}-bit")
        if depth != 1:
            raise InputError(f"{self.path}{where}: a volume of depth {depth}; expected 2-D pages")
        if len(self._pages) > 1 and rows != PATCH_SIZE:
            raise InputError(f"{self.path}{where}: height {rows}; pages of a multi-page stack must be "
                             f"{PATCH_SIZE} high")
        jpeg_ycbcr = page.photometric == tifffile.PHOTOMETRIC.YCBCR and page.compression in (6, 7)
        if page.photometric not in RGB_PHOTOMETRICS and not jpeg_ycbcr:
            raise InputError(f"{self.path}{where}: photometric {page.photometric.name}; expected RGB")
        if page.compression != 1 and page.compression not in tifffile.TIFF.DECOMPRESSORS:
            raise InputError(f"{self.path}{where}: {tifffile.COMPRESSION(page.compression).name} compression "
                             "cannot be decoded here (the 'imagecodecs' package would be needed)")
        if page.predictor != 1 and page.predictor not in tifffile.TIFF.UNPREDICTORS:
            raise InputError(f"{self.path}{where}: predictor {page.predictor} cannot be decoded here")
        offsets, counts = np.asarray(page.dataoffsets, np.int64), np.asarray(page.databytecounts, np.int64)
        expected = int(np.prod(page.chunked))
        if len(offsets) != expected or len(counts) != expected or (counts <= 0).any():
            raise InputError(f"{self.path}{where}: image data segments are missing")
        end, size = int((offsets + counts).max()), self.path.stat().st_size
        if end > size:
            raise InputError(f"{self.path}{where}: truncated: image data reach byte {end}, the file has {size}")

    def __len__(self) -> int:
        return len(self._pair_rows)

    def __str__(self) -> str:
        page, pages = self._pages[0], len(self._pages)
        layout = f"{pages} pages of {page.shape}" if pages > 1 else f"1 tall page {page.shape}"
        compression = "uncompressed" if page.compression == 1 else page.compression.name.lower()
        segments = f"{len(page.dataoffsets)} {'tiles' if page.is_tiled else 'strips'}" + (" each" if pages > 1 else "")
        kind = "BigTIFF" if self._tif.is_bigtiff else "TIFF"
        return f"{self.path.name} ({kind}, {layout}, {compression}, {segments})"

    def read(self, index: int) -> np.ndarray:
        page_index, row0 = self._pair_rows[index]
        page = self._pages[page_index]
        if page.is_final and page.planarconfig == tifffile.PLANARCONFIG.CONTIG:
            return self._read_raw_rows(page, row0)
        return self._decode_rows(page_index, page, row0)

    def _read_raw_rows(self, page: tifffile.TiffPage, row0: int) -> np.ndarray:
        """Uncompressed, contiguous data: the pair's rows are one byte range of the file."""
        out = np.empty((PATCH_SIZE, page.imagewidth, page.samplesperpixel), np.uint8)
        handle = self._tif.filehandle
        with handle.lock:
            handle.seek(page.dataoffsets[0] + row0 * out[0].nbytes)
            got = handle.readinto(out.data.cast("B"))
        if got != out.nbytes:
            raise InputError(f"{self.path}: truncated: pair at row {row0} ends past the end of the file")
        return out

    def _decode_rows(self, page_index: int, page: tifffile.TiffPage, row0: int) -> np.ndarray:
        """Strips or tiles: decode only the segments that overlap rows row0..row0+1023 and paste them."""
        out = np.empty((PATCH_SIZE, page.imagewidth, page.samplesperpixel), np.uint8)
        row1 = row0 + PATCH_SIZE
        carry = {}
        for index in _segments_overlapping(page, row0, row1):
            key = (page_index, index)
            decoded = self._cache[key] if key in self._cache else self._decode_segment(page, index)
            block, (sample, _, top, left, _), _ = decoded
            block = block[0]  # (rows, columns, contiguous samples) of this segment
            bottom, right = min(top + block.shape[0], row1), min(left + block.shape[1], page.imagewidth)
            first = max(top, row0)
            out[first - row0:bottom - row0, left:right, sample:sample + block.shape[2]] = \
                block[first - top:bottom - top, :right - left]
            if top + block.shape[0] > row1:
                carry[key] = decoded
        self._cache = carry  # a segment shared with the next pair is decoded once, not twice
        return out

    def _decode_segment(self, page: tifffile.TiffPage, index: int) -> tuple:
        handle = self._tif.filehandle
        with handle.lock:
            handle.seek(page.dataoffsets[index])
            data = handle.read(page.databytecounts[index])
        return page.decode(data, index, jpegtables=page.jpegtables, jpegheader=page.jpegheader)

    def close(self) -> None:
        self._cache = {}
        self._tif.close()


def _segments_overlapping(page: tifffile.TiffPage, row0: int, row1: int) -> list[int]:
    """Indices into a page's segment table (planes outermost, then rows, then columns, as TIFF orders them)."""
    height, width = page.imagelength, page.imagewidth
    planes = page.samplesperpixel if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE else 1
    seg_rows = page.tilelength if page.is_tiled else page.rowsperstrip
    columns = math.ceil(width / page.tilewidth) if page.is_tiled else 1
    rows = math.ceil(height / seg_rows)
    return [(plane * rows + row) * columns + column
            for plane in range(planes)
            for row in range(row0 // seg_rows, min(rows, math.ceil(row1 / seg_rows)))
            for column in range(columns)]


class _MhaStack:
    """A MetaImage: tall 2-D (width 1024, height 1024 N) or 3-D (1024 x 1024 x N) vector image.

    SimpleITK is imported only here: it is slow to import and GC delivers TIFFs."""

    def __init__(self, path: Path):
        import SimpleITK as sitk

        self.path = path
        self._reader = sitk.ImageFileReader()
        self._reader.SetFileName(str(path))
        try:
            self._reader.ReadImageInformation()
        except RuntimeError as error:
            raise InputError(f"{path}: not a readable MetaImage ({_last_line(error)})") from None
        size = self._reader.GetSize()
        if len(size) not in (2, 3):
            raise InputError(f"{path}: {len(size)}-D image; expected a tall 2-D or a 3-D stack")
        pixel_type = sitk.GetPixelIDValueAsString(self._reader.GetPixelIDValue())
        uint8 = self._reader.GetPixelID() in (sitk.sitkUInt8, sitk.sitkVectorUInt8)
        rows = size[1] * (size[2] if len(size) == 3 else 1)
        _check_pixels(path, "", rows, size[0], self._reader.GetNumberOfComponents(),
                      np.dtype(np.uint8) if uint8 else None, pixel_type)
        if len(size) == 3 and size[1] != PATCH_SIZE:
            raise InputError(f"{path}: slices of {size[0]}x{size[1]}; expected {PATCH_SIZE}x{PATCH_SIZE}")
        self._count = size[2] if len(size) == 3 else size[1] // PATCH_SIZE
        self._volume = len(size) == 3
        _check_mha_length(path, rows * size[0] * self._reader.GetNumberOfComponents())

    def __len__(self) -> int:
        return self._count

    def __str__(self) -> str:
        return f"{self.path.name} (MetaImage, {'3-D' if self._volume else 'tall 2-D'}, {self._count} pairs)"

    def read(self, index: int) -> np.ndarray:
        """One pair by SimpleITK's region extraction (streamed for uncompressed files)."""
        import SimpleITK as sitk

        if self._volume:  # extract size 0 drops the slice axis
            self._reader.SetExtractIndex([0, 0, index])
            self._reader.SetExtractSize([PATCH_SIZE, PATCH_SIZE, 0])
        else:
            self._reader.SetExtractIndex([0, index * PATCH_SIZE])
            self._reader.SetExtractSize([PATCH_SIZE, PATCH_SIZE])
        try:
            return sitk.GetArrayFromImage(self._reader.Execute())
        except RuntimeError as error:
            raise InputError(f"{self.path}: pair {index}: cannot read pixels ({_last_line(error)})") from None

    def close(self) -> None:
        """Nothing stays open between reads."""


def _check_mha_length(path: Path, data_bytes: int) -> None:
    """An uncompressed MetaImage with inline data must hold header + all pixel bytes (a cheap truncation test)."""
    with path.open("rb") as file:
        header = file.read(65536)
    marker = header.find(b"ElementDataFile")
    if marker < 0:
        return
    line_end = header.find(b"\n", marker)
    fields = dict(line.split(b"=", 1) for line in header[:line_end].splitlines() if b"=" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    if fields.get(b"ElementDataFile") != b"LOCAL" or fields.get(b"CompressedData", b"False") == b"True":
        return
    size = path.stat().st_size
    if size < line_end + 1 + data_bytes:
        raise InputError(f"{path}: truncated: {size} bytes, the header announces {line_end + 1 + data_bytes}")


def _last_line(error: Exception) -> str:
    """SimpleITK's messages end with the line that says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


# ------------------------------------------------------------------------------------------------- release


def _open_release(root: Path, split: str) -> InputSet:
    metadata_path = root / "metadata.json"
    data = _load_json(metadata_path)
    if not (isinstance(data, dict) and isinstance(data.get("sample_pairs"), dict)):
        raise InputError(f"{metadata_path}: expected the release's dict with 'sample_pairs'")
    entries = data["sample_pairs"]
    folders = {view: root / "images" / split / view for view in ("cell", "tissue")}
    if not folders["tissue"].is_dir():
        raise InputError(f"{folders['tissue']}: folder missing (cell patches are in {folders['cell']})")
    images = {view: {p.stem: p for p in folder.glob("*.jpg")} for view, folder in folders.items()}
    for view, other in (("cell", "tissue"), ("tissue", "cell")):
        lonely = sorted(images[view].keys() - images[other].keys(), key=pair_id_order)
        if lonely:
            raise InputError(f"{images[view][lonely[0]]}: no {other} patch {folders[other] / (lonely[0] + '.jpg')}"
                             f"{f' (and {len(lonely) - 1} more unpaired)' if len(lonely) > 1 else ''}")
    ids = sorted(images["cell"], key=pair_id_order)
    if not ids:
        raise InputError(f"{folders['cell']}: no .jpg images")
    metas, boxes = [], []
    for pair_id in ids:
        where = f"{metadata_path}: pair '{pair_id}'"
        if pair_id not in entries:
            raise InputError(f"{where}: missing, but {images['cell'][pair_id]} exists")
        entry = entries[pair_id]
        boxes.append(_validated_box(entry, where))
        if entry.get("subset", split) != split:
            raise InputError(f"{where}: subset is {entry['subset']!r}, but its images are under images/{split}")
        metas.append(entry)
    cell, tissue = (_ImageFiles([images[view][i] for i in ids]) for view in ("cell", "tissue"))
    return InputSet("release", ids, metas, boxes, cell, tissue)


def pair_id_order(pair_id: str) -> tuple:
    """Numeric ids in numeric order ("99" before "100"), anything else after them by name."""
    return (0, int(pair_id), pair_id) if pair_id.isdigit() else (1, 0, pair_id)


class _ImageFiles:
    """One ordinary image file per pair (the release's JPEGs); headers are checked when opened."""

    def __init__(self, paths: list[Path]):
        from PIL import Image

        self._paths = paths
        self.path = paths[0].parent
        for path in paths:
            try:
                with Image.open(path) as image:
                    mode, size = image.mode, image.size
            except Exception as error:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
                raise InputError(f"{path}: not a readable image ({error})") from None
            if mode not in ("RGB", "RGBA"):
                raise InputError(f"{path}: image mode {mode}; expected 8-bit RGB")
            if size != (PATCH_SIZE, PATCH_SIZE):
                raise InputError(f"{path}: size {size[0]}x{size[1]}; expected {PATCH_SIZE}x{PATCH_SIZE}")

    def __len__(self) -> int:
        return len(self._paths)

    def __str__(self) -> str:
        return f"{self.path} ({len(self)} files)"

    def read(self, index: int) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(self._paths[index]) as image:
                return np.array(image)  # a writable copy, like the TIFF readers' arrays
        except Exception as error:  # as in __init__: Pillow's errors have many types
            raise InputError(f"{self._paths[index]}: cannot decode pixels ({error})") from None

    def close(self) -> None:
        """Files are opened per read."""


# ------------------------------------------------------------------------------------------------ metadata


def _load_json(path: Path) -> object:
    if not path.is_file():
        raise InputError(f"{path}: {'is a folder, not a file' if path.is_dir() else 'missing'}")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read it ({error.strerror})") from None


def _ordered_entries(path: Path, data: object) -> list[tuple[str, object]]:
    """(label for messages, entry) in stacking order: GC's list as is, the release's dict by id."""
    if isinstance(data, list):
        return [(f"pair {i}", entry) for i, entry in enumerate(data)]
    if isinstance(data, dict) and isinstance(data.get("sample_pairs"), dict):
        pairs = data["sample_pairs"]
        return [(f"pair '{pair_id}'", pairs[pair_id]) for pair_id in sorted(pairs, key=pair_id_order)]
    raise InputError(f"{path}: expected a list of per-pair dicts (Grand-Challenge) or a dict with "
                     f"'sample_pairs' (release), not a {type(data).__name__}")


def _validated_box(entry: object, where: str) -> Box:
    """Check one pair's metadata and return its cell box; `where` names the file and pair in messages."""
    if not isinstance(entry, dict):
        raise InputError(f"{where}: expected a dict, not a {type(entry).__name__}")
    for section in ("cell", "tissue"):
        if not isinstance(entry.get(section), dict):
            raise InputError(f"{where}: '{section}' is missing or not a dict")
    for key in REQUIRED_NUMBERS:
        _number(entry, key, where, required=True)
    for section in ("cell", "tissue"):
        for key in SLIDE_BOX_KEYS:
            _number(entry, f"{section}.{key}", where, required=False)
        for axis in ("x", "y"):
            if entry[section][f"resized_mpp_{axis}"] <= 0:
                raise InputError(f"{where}: '{section}.resized_mpp_{axis}' must be positive, "
                                 f"not {entry[section][f'resized_mpp_{axis}']}")
    for axis in ("x", "y"):
        if not 0 <= entry[f"patch_{axis}_offset"] <= 1:
            raise InputError(f"{where}: 'patch_{axis}_offset' {entry[f'patch_{axis}_offset']} is outside [0, 1]")
    if all(key in entry[s] for s in ("cell", "tissue") for key in SLIDE_BOX_KEYS):
        _check_slide_boxes(entry["cell"], entry["tissue"], where)
    try:
        return cell_box_in_tissue(entry)
    except ValueError as error:
        raise InputError(f"{where}: {error}") from None


def _number(entry: dict, dotted: str, where: str, required: bool) -> None:
    """A finite int or float (bool is not a number) at `dotted`, e.g. "cell.resized_mpp_x"."""
    *sections, key = dotted.split(".")
    holder = entry
    for section in sections:
        holder = holder[section]
    if key not in holder:
        if required:
            raise InputError(f"{where}: missing '{dotted}'")
        return
    value = holder[key]
    if not is_number(value):
        raise InputError(f"{where}: '{dotted}' must be a number, not {value!r}")
    if not math.isfinite(value):
        raise InputError(f"{where}: '{dotted}' must be finite, not {value}")


def _check_slide_boxes(cell: dict, tissue: dict, where: str) -> None:
    """Slide-pixel boxes must be non-empty and the cell box's centre must lie in the tissue box."""
    for name, box in (("cell", cell), ("tissue", tissue)):
        if box["x_end"] <= box["x_start"] or box["y_end"] <= box["y_start"]:
            raise InputError(f"{where}: empty {name} box (x {box['x_start']}..{box['x_end']}, "
                             f"y {box['y_start']}..{box['y_end']})")
    centre = ((cell["x_start"] + cell["x_end"]) / 2, (cell["y_start"] + cell["y_end"]) / 2)
    if not (tissue["x_start"] <= centre[0] <= tissue["x_end"] and tissue["y_start"] <= centre[1] <= tissue["y_end"]):
        raise InputError(f"{where}: the cell box (x {cell['x_start']}..{cell['x_end']}, y {cell['y_start']}.."
                         f"{cell['y_end']}) lies outside its tissue box (x {tissue['x_start']}..{tissue['x_end']}, "
                         f"y {tissue['y_start']}..{tissue['y_end']})")


# ------------------------------------------------------------------------------------------------- logging


def log_environment(input_dir: str | Path, device: object = None) -> None:
    """Log what GC handed over (inputs.json sockets) and what we run on: the first things to read when a job
    fails. `device` is the one chosen for inference (default: what torch finds). Never raises for inputs.json,
    which is not ours to validate."""
    inputs_json = Path(input_dir) / "inputs.json"
    if inputs_json.is_file():
        try:
            sockets = json.loads(inputs_json.read_bytes())
            summary = ", ".join(f"{s['interface']['slug']} -> {s['interface']['relative_path']}" for s in sockets)
        except (OSError, ValueError, KeyError, TypeError) as error:
            summary = f"unreadable ({error})"
        log.info("inputs.json: %s", summary)
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    log.info("torch %s, CUDA %s, GPU %s, running on %s", torch.__version__, torch.version.cuda, gpu,
             device if device is not None else ("cuda" if gpu != "none" else "cpu"))
