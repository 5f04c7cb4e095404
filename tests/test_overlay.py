"""overlay.py: the colormap and blend against an obvious float restatement."""

import numpy as np
import pytest

from hearflow.overlay import draw_box, draw_marker, heatmap_colors, overlay_heatmap


def test_colormap_ends_are_jet_blue_and_red():
    colors = heatmap_colors(np.array([[0.0, 1.0, -3.0, 7.0]], dtype=np.float32))
    assert colors.dtype == np.uint8 and colors.shape == (1, 4, 3)
    np.testing.assert_array_equal(colors[0, 0], [0, 0, 128])  # dark blue, RGB
    np.testing.assert_array_equal(colors[0, 1], [128, 0, 0])  # dark red
    np.testing.assert_array_equal(colors[0, 2], colors[0, 0])  # clipped below
    np.testing.assert_array_equal(colors[0, 3], colors[0, 1])  # clipped above


def test_hotter_means_redder():
    colors = heatmap_colors(np.linspace(0, 1, 256, dtype=np.float32)[None]).astype(int)[0]
    warmth = colors[:, 0] - colors[:, 2]
    assert warmth[-1] > warmth[128] > warmth[0]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_blend_matches_float_reference(alpha):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    heatmap = rng.random((37, 53), dtype=np.float32)
    expected = (1 - alpha) * frame.astype(np.float64) + alpha * heatmap_colors(heatmap).astype(np.float64)
    original = frame.copy()
    blended = overlay_heatmap(frame, heatmap, alpha)
    np.testing.assert_array_equal(frame, original)  # input untouched
    assert blended.dtype == np.uint8 and blended.shape == frame.shape
    assert np.abs(blended.astype(np.float64) - expected).max() <= 1.0
    if alpha == 0.0:
        np.testing.assert_array_equal(blended, frame)


def test_bad_inputs_are_refused():
    frame = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="does not match"):
        overlay_heatmap(frame, np.zeros((5, 4), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        overlay_heatmap(frame.astype(np.float32), np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="alpha"):
        overlay_heatmap(frame, np.zeros((4, 5), np.float32), alpha=1.5)


def test_box_and_marker_draw_on_a_copy():
    image = np.zeros((50, 60, 3), np.uint8)
    boxed = draw_box(image, (10, 5, 40, 30), color=(255, 0, 0), thickness=1)
    assert image.max() == 0
    np.testing.assert_array_equal(boxed[5, 10:41, 0], 255)  # top edge, inclusive corners
    np.testing.assert_array_equal(boxed[30, 10:41, 0], 255)
    assert boxed[17, 25].max() == 0  # inside stays untouched
    marked = draw_marker(image, (20, 25), color=(0, 255, 0))
    assert marked[25, 20, 1] == 255 and image.max() == 0
