
import numpy as np

import pytest

from ocelot_algo.points import PostProcess, find_cells


def maps_with_cells(cells, size=512, radius=3.0):
    """Softmax-like maps with a blob of class `cls` around each (x, y) given in 1024-px coordinates."""
    probs = np.zeros((3, size, size), np.float32)
    yy, xx = np.mgrid[:size, :size]
    for x, y, cls in cells:
        gx, gy = (x + 0.5) * size / 1024 - 0.5, (y + 0.5) * size / 1024 - 0.5
        probs[cls] = np.maximum(probs[cls], 0.9 * np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * radius ** 2)))
    probs[0] = 1 - probs[1] - probs[2]
    return probs


def test_each_blob_becomes_one_point_at_its_centre_with_its_class():
    truth = [(100, 200, 1), (500, 40, 2), (1020, 1010, 2), (0, 0, 1)]
    cells = find_cells(maps_with_cells(truth), PostProcess(sigma=1.0, min_distance=3, threshold=0.3))
    found = sorted(zip(cells.x.tolist(), cells.y.tolist(), cells.cls.tolist()))
    assert len(found) == len(truth)
    for (x, y, c), (tx, ty, tc) in zip(found, sorted(truth)):
        assert abs(x - tx) <= 1 and abs(y - ty) <= 1 and c == tc
    assert all(isinstance(v, np.integer) for v in (cells.x[0], cells.y[0], cells.cls[0]))
    assert np.all((cells.probability >= 0) & (cells.probability <= 1))
    assert np.all(np.diff(cells.probability) <= 0)  # sorted by probability


def test_threshold_and_min_distance():
    probs = maps_with_cells([(100, 100, 1), (120, 100, 2)])  # 10 grid px apart
    assert len(find_cells(probs, PostProcess(sigma=0, min_distance=2, threshold=0.3))) == 2
    assert len(find_cells(probs, PostProcess(sigma=0, min_distance=12, threshold=0.3))) == 1
    assert len(find_cells(probs, PostProcess(sigma=0, min_distance=2, threshold=0.95))) == 0


def test_a_flat_top_gives_one_point():
    probs = np.zeros((3, 64, 64), np.float32)
    probs[0] = 1
    probs[2, 10:13, 20:24], probs[0, 10:13, 20:24] = 1.0, 0.0
    cells = find_cells(probs, PostProcess(sigma=0, min_distance=1, threshold=0.5))
    assert len(cells) == 1 and cells.cls[0] == 2


def test_a_map_that_is_all_one_flat_top_gives_one_point():
    probs = np.zeros((3, 8, 8), np.float32)
    probs[1] = 1.0
    cells = find_cells(probs, PostProcess(sigma=0, min_distance=1, threshold=0.5))
    assert len(cells) == 1 and cells.cls[0] == 1


@pytest.mark.parametrize("field, value", [("threshold", "0.3"), ("threshold", 1.0), ("sigma", -1.0),
                                          ("min_distance", 0), ("min_distance", 2.5), ("tumour_bias", float("nan"))])
def test_post_processing_refuses_values_it_cannot_use(field, value):
    with pytest.raises(ValueError, match=field):
        PostProcess(**{field: value})


def test_empty_maps_give_no_points():
    probs = np.zeros((3, 128, 128), np.float32)
    probs[0] = 1
    cells = find_cells(probs, PostProcess())
    assert len(cells) == 0 and cells.as_array().shape == (0, 4)


def test_late_fusion_moves_the_class_towards_the_tissue_under_the_cell():
    probs = maps_with_cells([(100, 100, 1), (900, 900, 2)])
    probs[1:] = probs[1:].sum(0) * np.array([0.55, 0.45])[:, None, None]  # both cells lean to background
    cancer = np.full(probs.shape[1:], 0.1, np.float32)
    cancer[256:, 256:] = 0.9  # the second cell lies on predicted cancer area
    plain = PostProcess(sigma=0, min_distance=3, threshold=0.3)
    assert find_cells(probs, plain).cls.tolist() == [1, 1]
    assert find_cells(probs, plain, cancer).cls.tolist() == [1, 1]  # a tissue map alone changes nothing
    fused = find_cells(probs, PostProcess(sigma=0, min_distance=3, threshold=0.3, tissue_weight=0.5), cancer)
    assert sorted(zip(fused.x.tolist(), fused.cls.tolist())) == [(100, 1), (900, 2)]
    biased = find_cells(probs, PostProcess(sigma=0, min_distance=3, threshold=0.3, tumour_bias=0.5))
    assert biased.cls.tolist() == [2, 2]  # log(0.55 / 0.45) = 0.2 < 0.5
    with pytest.raises(ValueError, match="none was given"):
        find_cells(probs, PostProcess(tissue_weight=0.5))
