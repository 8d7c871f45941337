"""Reading inputs: every supported layout reads back exactly, every bad input fails up front with one clear line."""
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from ocelot_algo import sample
from ocelot_algo.geometry import cell_box_in_tissue
from ocelot_algo.inputs import InputError, log_environment, open_inputs

SAMPLE = Path(__file__).parent / "input"
SOCKETS = ("images/cell_patches", "images/tissue_patches")


@pytest.fixture(scope="module")
def source():
    """The committed sample as plain arrays, read whole with tifffile (independently of the code under test)."""
    cells, tissues = (tifffile.imread(SAMPLE / socket / f"{socket.split('/')[1]}.tif").reshape(-1, 1024, 1024, 3)
                      for socket in SOCKETS)
    return cells, tissues, json.loads((SAMPLE / "metadata.json").read_text())


def write_gc(root: Path, cells, tissues, metadata, write=None, suffix=".tif") -> Path:
    """A GC input folder; write(path, images) writes one socket's stack (default: GC's tall BigTIFF)."""
    write = write or (lambda path, images: sample.write_tiff(path, images, len(images), mpp=0.2))
    for socket, images in zip(SOCKETS, (cells, tissues)):
        (root / socket).mkdir(parents=True)
        write(root / socket / f"stack{suffix}", list(images))
    (root / "metadata.json").write_text(json.dumps(metadata))
    return root


def with_sample_images(root: Path, metadata) -> Path:
    """The committed images (linked, not copied) with the given metadata."""
    (root / "images").mkdir(parents=True)
    for socket in SOCKETS:
        (root / socket).symlink_to(SAMPLE / socket, target_is_directory=True)
    (root / "metadata.json").write_text(metadata if isinstance(metadata, str) else json.dumps(metadata))
    return root


def assert_reads_back(root: Path, cells, tissues, order=None):
    with open_inputs(root) as inputs:
        assert len(inputs) == len(cells)
        for index in order or range(len(inputs)):
            pair = inputs.read(index)
            assert pair.index == index and pair.name == f"image_{index}"
            for got, expected in ((pair.cell, cells[index]), (pair.tissue, tissues[index])):
                assert got.shape == (1024, 1024, 3) and got.dtype == np.uint8
                assert got.flags.c_contiguous and got.flags.writeable
                np.testing.assert_array_equal(got, expected[..., :3])


def input_error(root: Path, *fragments: str, split="test") -> str:
    """open_inputs must fail with one line that contains every fragment (file names and the problem)."""
    with pytest.raises(InputError) as caught:
        open_inputs(root, split=split).close()
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ----------------------------------------------------------------------------------------- positive cases


def test_committed_sample_reads_back_exactly(source):
    cells, tissues, metas = source
    with open_inputs(SAMPLE) as inputs:  # inputs.json beside metadata.json is ignored
        assert inputs.layout == "grand-challenge"
        assert inputs.pair_names == ("image_0", "image_1")
        assert list(inputs.metas) == metas
        assert list(inputs.boxes) == [cell_box_in_tissue(m) for m in metas]
        pairs = list(inputs)
    assert [p.index for p in pairs] == [0, 1]
    for pair, cell, tissue, meta in zip(pairs, cells, tissues, metas):
        np.testing.assert_array_equal(pair.cell, cell)
        np.testing.assert_array_equal(pair.tissue, tissue)
        assert pair.meta == meta and pair.box == cell_box_in_tissue(meta)


TIFF_VARIANTS = {
    "tall-classic-tiff": {"bigtiff": False},
    "tall-zlib-strips": {"compression": "zlib", "rowsperstrip": 64},
    "tall-zlib-tiles": {"compression": "zlib", "tile": 256, "bigtiff": False},
    "tall-uncompressed-tiles": {"tile": 256},
    "multipage": {"multipage": True},
    "multipage-classic-zlib-tiles": {"multipage": True, "bigtiff": False, "compression": "zlib", "tile": 512},
}


@pytest.mark.parametrize("options", TIFF_VARIANTS.values(), ids=TIFF_VARIANTS.keys())
def test_tiff_variants_read_back_exactly(tmp_path, source, options):
    cells, tissues, metas = source
    write_gc(tmp_path, cells, tissues, metas,
             lambda path, images: sample.write_tiff(path, images, len(images), mpp=0.2, **options))
    assert_reads_back(tmp_path, cells, tissues, order=[1, 0])


DIRECT_VARIANTS = {  # layouts write_tiff never makes: segments straddling two pairs, predictors, planes
    "strips-straddling-pairs-predictor": {"compression": "zlib", "predictor": True, "rowsperstrip": 100},
    "one-compressed-strip": {"compression": "zlib", "rowsperstrip": 2048},
    "tiles-straddling-pairs": {"compression": "zlib", "tile": (320, 256)},
    "separate-planes": {"planarconfig": "separate", "rowsperstrip": 300},
}


@pytest.mark.parametrize("options", DIRECT_VARIANTS.values(), ids=DIRECT_VARIANTS.keys())
@pytest.mark.parametrize("order", [[0, 1], [1, 0]], ids=["forward", "backward"])
def test_unaligned_segments_read_back_exactly(tmp_path, source, options, order):
    cells, tissues, metas = source

    def write(path, images):
        stack = np.concatenate(images)
        if options.get("planarconfig") == "separate":
            stack = np.ascontiguousarray(stack.transpose(2, 0, 1))
        tifffile.imwrite(path, stack, photometric="rgb", **options)

    write_gc(tmp_path, cells, tissues, metas, write)
    assert_reads_back(tmp_path, cells, tissues, order=order)


def test_reduced_resolution_pages_are_not_pairs(tmp_path, source):
    """A thumbnail or pyramid level after the full-resolution stack (as slide scanners write them) is skipped."""
    cells, tissues, metas = source

    def write(path, images):
        with tifffile.TiffWriter(path) as tif:
            tif.write(np.concatenate(images), photometric="rgb")
            tif.write(np.concatenate(images)[::8, ::8], photometric="rgb", subfiletype=1)

    write_gc(tmp_path, cells, tissues, metas, write)
    assert_reads_back(tmp_path, cells, tissues)


def test_a_segment_shared_by_two_pairs_is_decoded_once(tmp_path, source, monkeypatch):
    """One compressed strip holding the whole stack: reading pairs in order must not decode it per pair."""
    from ocelot_algo import inputs as module

    cells, tissues, metas = source
    write_gc(tmp_path, cells, tissues, metas,
             lambda path, images: tifffile.imwrite(path, np.concatenate(images), photometric="rgb",
                                                   compression="zlib", rowsperstrip=2048))
    decoded = []
    original = module._TiffStack._decode_segment
    monkeypatch.setattr(module._TiffStack, "_decode_segment",
                        lambda self, page, index: decoded.append(index) or original(self, page, index))
    with open_inputs(tmp_path) as opened:
        list(opened)
    assert decoded == [0, 0]  # once per socket


def test_rgba_loses_its_alpha(tmp_path, source):
    cells, tissues, metas = source
    alpha = np.full((*cells.shape[:3], 1), 128, np.uint8)
    write_gc(tmp_path, np.concatenate([cells, alpha], -1), np.concatenate([tissues, alpha], -1), metas)
    assert_reads_back(tmp_path, cells, tissues)


@pytest.mark.parametrize("volume", [False, True], ids=["tall-2d", "3d"])
@pytest.mark.parametrize("compress", [False, True], ids=["raw", "compressed"])
def test_mha_reads_back_exactly(tmp_path, source, volume, compress):
    cells, tissues, metas = source
    write_gc(tmp_path, cells, tissues, metas,
             lambda path, images: sample.write_mha(path, images, volume=volume, compress=compress), suffix=".mha")
    assert_reads_back(tmp_path, cells, tissues, order=[1, 0])


def test_release_dict_metadata_in_gc_layout_is_ordered_by_id(tmp_path, source):
    cells, tissues, metas = source
    root = with_sample_images(tmp_path, {"sample_pairs": {"10": metas[1], "9": metas[0]}})
    with open_inputs(root) as inputs:
        assert list(inputs.metas) == metas  # "9" before "10": numeric, not string order
        assert inputs.pair_names == ("image_0", "image_1")


def test_other_files_in_socket_folders_are_ignored(tmp_path, source):
    cells, tissues, metas = source
    write_gc(tmp_path, cells, tissues, metas)
    (tmp_path / SOCKETS[0] / "notes.txt").write_text("not an image")
    (tmp_path / SOCKETS[1] / ".hidden.tif").write_bytes(b"editor litter")
    assert_reads_back(tmp_path, cells, tissues)


def write_release(root: Path, split: str, cells, tissues, entries: dict, ids) -> Path:
    for view, images in (("cell", cells), ("tissue", tissues)):
        folder = root / "images" / split / view
        folder.mkdir(parents=True)
        for pair_id, image in zip(ids, images):
            Image.fromarray(image).save(folder / f"{pair_id}.jpg", quality=95)
    (root / "metadata.json").write_text(json.dumps({"general_info": {}, "sample_pairs": entries}))
    return root


def test_release_layout_reads_pairs_of_the_split_in_id_order(tmp_path, source):
    cells, tissues, metas = source
    entries = {"10": {**metas[1], "subset": "val"}, "9": {**metas[0], "subset": "val"},
               "11": {**metas[0], "subset": "train"}}  # another split's entry: not a pair of "val"
    root = write_release(tmp_path, "val", cells, tissues, entries, ids=["9", "10"])
    with open_inputs(root, split="val") as inputs:
        assert inputs.layout == "release"
        assert inputs.pair_names == ("9", "10")
        pairs = list(inputs)
    for pair, meta, view in zip(pairs, metas, ("9", "10")):
        assert pair.meta["slide_name"] == meta["slide_name"]
        assert pair.cell.flags.writeable and pair.cell.flags.c_contiguous
        np.testing.assert_array_equal(pair.cell, np.asarray(Image.open(root / "images/val/cell" / f"{view}.jpg")))


def test_release_layout_on_the_real_dataset(shared_data):
    with open_inputs(shared_data, split="train") as inputs:
        names = inputs.pair_names
        assert inputs.layout == "release" and len(inputs) > 100
        assert list(names) == sorted(names, key=int)
        pair = inputs.read(0)
    assert pair.name == names[0] and pair.cell.shape == pair.tissue.shape == (1024, 1024, 3)


def test_log_environment_summarises_inputs_json(caplog, tmp_path):
    with caplog.at_level(logging.INFO, logger="ocelot_algo"):
        log_environment(SAMPLE, "cpu")
    assert "cell-patches -> images/cell_patches" in caplog.text and "metadata.json" in caplog.text
    assert "torch" in caplog.text and "running on cpu" in caplog.text
    (tmp_path / "inputs.json").write_text("[{")
    with caplog.at_level(logging.INFO, logger="ocelot_algo"):
        log_environment(tmp_path)  # a broken inputs.json is logged, never fatal
    assert "inputs.json: unreadable" in caplog.text


# ------------------------------------------------------------------------------------ bad image folders


def test_no_inputs_at_all(tmp_path):
    input_error(tmp_path, str(tmp_path), "images/cell_patches", "images/test/cell")
    input_error(tmp_path / "absent", "does not exist")
    (tmp_path / "a-file").write_text("")
    input_error(tmp_path / "a-file", "is a file, not a folder")


def test_a_release_without_the_split_names_the_splits_it_has(tmp_path, source):
    cells, tissues, metas = source
    root = write_release(tmp_path, "train", cells, tissues, {"1": metas[0], "2": metas[1]}, ids=["1", "2"])
    input_error(root, "images/test/cell", "this release folder has --split train")


def test_missing_socket_folder(tmp_path, source):
    write_gc(tmp_path, *source)
    shutil.rmtree(tmp_path / SOCKETS[1])
    input_error(tmp_path, "tissue_patches", "socket folder missing")


@pytest.mark.parametrize("litter", [[], ["readme.txt"]], ids=["empty", "no-image"])
def test_socket_without_image(tmp_path, source, litter):
    write_gc(tmp_path, *source)
    (tmp_path / SOCKETS[0] / "stack.tif").unlink()
    for name in litter:
        (tmp_path / SOCKETS[0] / name).write_text("x")
    input_error(tmp_path, "cell_patches", "no .tif, .tiff or .mha image")


def test_several_images_in_one_socket(tmp_path, source):
    write_gc(tmp_path, *source)
    shutil.copy(tmp_path / SOCKETS[1] / "stack.tif", tmp_path / SOCKETS[1] / "copy.tiff")
    input_error(tmp_path, "tissue_patches", "2 images", "copy.tiff", "stack.tif")


@pytest.mark.parametrize("suffix, problem", [(".tif", "not a readable TIFF"), (".mha", "not a readable MetaImage")])
def test_corrupt_image(tmp_path, source, suffix, problem):
    cells, tissues, metas = source
    write_gc(tmp_path, cells, tissues, metas)
    (tmp_path / SOCKETS[0] / "stack.tif").unlink()
    (tmp_path / SOCKETS[0] / f"junk{suffix}").write_bytes(b"this is not an image" * 100)
    input_error(tmp_path, f"junk{suffix}", problem)


@pytest.mark.parametrize("suffix", [".tif", ".mha"])
def test_truncated_image(tmp_path, source, suffix):
    cells, tissues, metas = source
    write_gc(tmp_path, cells, tissues, metas, suffix=suffix,
             write=sample.write_mha if suffix == ".mha" else None)
    path = tmp_path / SOCKETS[1] / f"stack{suffix}"
    path.write_bytes(path.read_bytes()[:5_000_000])
    input_error(tmp_path, path.name, "truncated")


def test_corrupt_compressed_data_fails_when_read(tmp_path, source):
    """Headers intact, a strip's bytes garbled: found only on decoding; still an InputError naming file and pair."""
    cells, tissues, metas = source
    write_gc(tmp_path, cells, tissues, metas, lambda path, images: sample.write_tiff(
        path, images, len(images), mpp=0.2, compression="zlib", rowsperstrip=64))
    path = tmp_path / SOCKETS[0] / "stack.tif"
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[20]  # a strip of pair 1
    data = bytearray(path.read_bytes())
    data[offset:offset + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with open_inputs(tmp_path) as inputs:
        inputs.read(0)
        with pytest.raises(InputError, match=r"stack\.tif: pair 1: cannot decode"):
            inputs.read(1)


@pytest.mark.skipif(bool(__import__("importlib").util.find_spec("imagecodecs")), reason="imagecodecs decodes LZW")
def test_compression_without_codec(tmp_path, source):
    cells, tissues, metas = source
    write_gc(tmp_path, cells, tissues, metas, lambda path, images: sample.write_tiff(
        path, images, len(images), mpp=0.2, compression="zlib", rowsperstrip=64))
    path = tmp_path / SOCKETS[0] / "stack.tif"
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["Compression"]
        offset = tag.valueoffset
    data = bytearray(path.read_bytes())
    data[offset:offset + 2] = (5).to_bytes(2, "little")  # claim LZW
    path.write_bytes(bytes(data))
    input_error(tmp_path, "stack.tif", "LZW compression cannot be decoded")


BAD_PIXELS = {  # stack of two pairs -> expected message fragment
    "height": (np.zeros((1500, 1024, 3), np.uint8), "height 1500 is not a positive multiple of 1024"),
    "width": (np.zeros((2048, 512, 3), np.uint8), "width 512; expected 1024"),
    "grayscale": (np.zeros((2048, 1024), np.uint8), "1 channel(s) (grayscale)"),
    "two-channels": (np.zeros((2048, 1024, 2), np.uint8), "2 channel(s)"),
    "uint16": (np.zeros((2048, 1024, 3), np.uint16), "uint16 pixels"),
    "float": (np.zeros((2048, 1024, 3), np.float32), "float32 pixels"),
}


@pytest.mark.parametrize("stack, problem", BAD_PIXELS.values(), ids=BAD_PIXELS.keys())
def test_bad_tiff_pixels(tmp_path, source, stack, problem):
    write_gc(tmp_path, *source)
    path = tmp_path / SOCKETS[0] / "stack.tif"
    photometric = "rgb" if stack.ndim == 3 and stack.shape[2] == 3 else "minisblack"
    tifffile.imwrite(path, stack, photometric=photometric, planarconfig="contig" if stack.ndim == 3 else None)
    input_error(tmp_path, "stack.tif", problem)


@pytest.mark.parametrize("stack, problem", [
    (np.zeros((2048, 1024), np.uint8), "1 channel(s) (grayscale)"),
    (np.zeros((2048, 1024, 3), np.uint16), "16-bit unsigned integer pixels"),
], ids=["grayscale", "uint16"])
def test_bad_mha_pixels(tmp_path, source, stack, problem):
    import SimpleITK as sitk

    write_gc(tmp_path, *source)
    (tmp_path / SOCKETS[1] / "stack.tif").unlink()
    sitk.WriteImage(sitk.GetImageFromArray(stack, isVector=stack.ndim == 3), str(tmp_path / SOCKETS[1] / "x.mha"))
    input_error(tmp_path, "x.mha", problem)


def test_multipage_pages_must_be_single_pairs(tmp_path, source):
    cells, tissues, metas = source
    write_gc(tmp_path, cells, tissues, metas)
    with tifffile.TiffWriter(tmp_path / SOCKETS[0] / "stack.tif") as tif:
        tif.write(np.concatenate(cells), photometric="rgb")
        tif.write(cells[0], photometric="rgb")
    input_error(tmp_path, "stack.tif", "page 0", "height 2048")


@pytest.mark.parametrize("counts, expected", [
    ((2, 1, 2), "holds 2 pairs, "), ((2, 2, 1), "metadata.json 1"), ((1, 1, 2), "metadata.json 2"),
])
def test_pair_counts_must_agree(tmp_path, source, counts, expected):
    cells, tissues, metas = source
    write_gc(tmp_path, cells[:counts[0]], tissues[:counts[1]], metas[:counts[2]])
    input_error(tmp_path, "pair counts differ", "cell_patches/stack.tif", "tissue_patches/stack.tif", expected)


# -------------------------------------------------------------------------------------------- bad metadata


def test_metadata_is_a_folder(tmp_path, source):
    root = with_sample_images(tmp_path, [])
    (root / "metadata.json").unlink()
    (root / "metadata.json").mkdir()
    input_error(root, "metadata.json: is a folder, not a file")


def test_metadata_missing(tmp_path, source):
    write_gc(tmp_path, *source)
    (tmp_path / "metadata.json").unlink()
    input_error(tmp_path, "metadata.json: missing")


@pytest.mark.parametrize("text", ["[{", "", "\xff\xfe"], ids=["truncated", "empty", "not-utf8"])
def test_metadata_not_json(tmp_path, text):
    root = with_sample_images(tmp_path, "")
    (root / "metadata.json").write_bytes(text.encode("latin-1"))
    input_error(root, "metadata.json: not valid JSON")


@pytest.mark.parametrize("document", ['"pairs"', "{}", '{"sample_pairs": []}', "3"])
def test_metadata_not_a_list(tmp_path, document):
    input_error(with_sample_images(tmp_path, document), "metadata.json", "expected a list of per-pair dicts")


def broken(metas, index, change):
    """A deep copy of metas with change(entry) applied to entry `index`."""
    metas = json.loads(json.dumps(metas))
    change(metas[index])
    return metas


def test_metadata_entry_not_a_dict(tmp_path, source):
    metas = source[2]
    input_error(with_sample_images(tmp_path, [metas[0], [1, 2]]), "metadata.json: pair 1", "expected a dict")


@pytest.mark.parametrize("dotted", ["patch_x_offset", "patch_y_offset", "cell.resized_mpp_x", "cell.resized_mpp_y",
                                    "tissue.resized_mpp_x", "tissue.resized_mpp_y"])
def test_metadata_lacking_a_key(tmp_path, source, dotted):
    *sections, key = dotted.split(".")
    metas = broken(source[2], 1, lambda m: (m[sections[0]] if sections else m).pop(key))
    input_error(with_sample_images(tmp_path, metas), "metadata.json: pair 1", f"missing '{dotted}'")


@pytest.mark.parametrize("section", ["cell", "tissue"])
def test_metadata_lacking_a_section(tmp_path, source, section):
    metas = broken(source[2], 0, lambda m: m.pop(section))
    input_error(with_sample_images(tmp_path, metas), "pair 0", f"'{section}' is missing or not a dict")


WRONG_VALUES = {  # (dotted key, value, message fragment)
    "string": ("patch_x_offset", "0.5", "'patch_x_offset' must be a number, not '0.5'"),
    "bool": ("cell.resized_mpp_x", True, "'cell.resized_mpp_x' must be a number, not True"),
    "null": ("tissue.resized_mpp_y", None, "must be a number, not None"),
    "list": ("patch_y_offset", [0.5], "must be a number"),
    "box-string": ("tissue.x_start", "10", "'tissue.x_start' must be a number"),
    "nan": ("cell.resized_mpp_y", math.nan, "must be finite"),
    "infinite": ("tissue.x_end", math.inf, "'tissue.x_end' must be finite"),
    "zero-mpp": ("tissue.resized_mpp_x", 0, "must be positive"),
    "negative-mpp": ("cell.resized_mpp_x", -0.19, "must be positive"),
    "offset-above-1": ("patch_x_offset", 1.2, "'patch_x_offset' 1.2 is outside [0, 1]"),
    "offset-below-0": ("patch_y_offset", -0.1, "'patch_y_offset' -0.1 is outside [0, 1]"),
}


@pytest.mark.parametrize("dotted, value, problem", WRONG_VALUES.values(), ids=WRONG_VALUES.keys())
def test_metadata_wrong_value(tmp_path, source, dotted, value, problem):
    *sections, key = dotted.split(".")
    metas = broken(source[2], 1, lambda m: (m[sections[0]] if sections else m).__setitem__(key, value))
    input_error(with_sample_images(tmp_path, metas), "metadata.json: pair 1", problem)


def test_swapped_cell_and_tissue_mpp_without_slide_boxes(tmp_path, source):
    """Without slide boxes nothing cross-checks the mpp: a cell field of view larger than the tissue patch is
    refused, or every tissue crop would be garbage."""
    def swap(meta):
        meta["cell"], meta["tissue"] = meta["tissue"], meta["cell"]
        for section in ("cell", "tissue"):
            for key in ("x_start", "y_start", "x_end", "y_end"):
                meta[section].pop(key, None)

    metas = broken(source[2], 1, swap)
    input_error(with_sample_images(tmp_path, metas), "metadata.json: pair 1", "are the cell and tissue mpp swapped?")


def test_cell_box_outside_its_tissue_box(tmp_path, source):
    def move_cell_box(meta):
        width = meta["tissue"]["x_end"] - meta["tissue"]["x_start"]
        meta["cell"]["x_start"] += 2 * width
        meta["cell"]["x_end"] += 2 * width

    metas = broken(source[2], 0, move_cell_box)
    input_error(with_sample_images(tmp_path, metas), "pair 0", "lies outside its tissue box")


def test_empty_slide_box(tmp_path, source):
    metas = broken(source[2], 0, lambda m: m["tissue"].__setitem__("y_end", m["tissue"]["y_start"]))
    input_error(with_sample_images(tmp_path, metas), "pair 0", "empty tissue box")


def test_slide_box_inconsistent_with_offsets(tmp_path, source):
    """Offsets and slide boxes that disagree by ~100 tissue px (a centre/corner mix-up)."""
    metas = broken(source[2], 1, lambda m: m.__setitem__("patch_x_offset", m["patch_x_offset"] + 0.1))
    input_error(with_sample_images(tmp_path, metas), "metadata.json: pair 1", "inconsistent")


# ------------------------------------------------------------------------------------------- bad release


def test_release_image_without_partner(tmp_path, source):
    cells, tissues, metas = source
    root = write_release(tmp_path, "test", cells, tissues[:1], {"1": metas[0], "2": metas[1]}, ids=["1", "2"])
    input_error(root, "images/test/cell/2.jpg", "no tissue patch", "images/test/tissue/2.jpg")


def test_release_pair_without_metadata(tmp_path, source):
    cells, tissues, metas = source
    root = write_release(tmp_path, "test", cells, tissues, {"1": metas[0]}, ids=["1", "2"])
    input_error(root, "metadata.json: pair '2'", "missing")


def test_release_pair_of_another_subset(tmp_path, source):
    cells, tissues, metas = source
    entries = {"1": {**metas[0], "subset": "val"}, "2": {**metas[1], "subset": "train"}}
    root = write_release(tmp_path, "val", cells, tissues, entries, ids=["1", "2"])
    input_error(root, "pair '2'", "subset is 'train'", split="val")


def test_release_jpeg_corrupt_behind_its_header_names_the_file(tmp_path, source):
    cells, tissues, metas = source
    root = write_release(tmp_path, "test", cells, tissues, {"1": metas[0], "2": metas[1]}, ids=["1", "2"])
    path = root / "images/test/tissue/2.jpg"
    path.write_bytes(path.read_bytes()[:20000])
    with open_inputs(root) as inputs:
        inputs.read(0)
        with pytest.raises(InputError, match=r"images/test/tissue/2\.jpg: cannot decode pixels"):
            inputs.read(1)


def test_release_grayscale_jpeg(tmp_path, source):
    cells, tissues, metas = source
    root = write_release(tmp_path, "test", cells, tissues, {"1": metas[0], "2": metas[1]}, ids=["1", "2"])
    Image.fromarray(cells[0][..., 0]).save(root / "images/test/cell/1.jpg")
    input_error(root, "images/test/cell/1.jpg", "image mode L")
