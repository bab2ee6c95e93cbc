"""Uniform borders (padding, letterboxing, scan margins) come off before embedding; photos keep their pixels."""

import numpy as np
import pytest
from PIL import Image

from lookalike.errors import LookalikeError
from lookalike.search.describe.features import border_box, input_options, inputs_of, trim_borders


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(40, 215, (h, w, 3), dtype=np.uint8))


def padded(content: Image.Image, w: int, h: int, colour) -> Image.Image:
    frame = Image.new("RGB", (w, h), colour)
    frame.paste(content, ((w - content.width) // 2, (h - content.height) // 2))
    return frame


@pytest.mark.parametrize("colour", ["white", "black", (250, 247, 252)])
def test_portrait_padded_to_landscape_gets_its_photo_back(colour):
    content = photo(180, 240)
    img = padded(content, 320, 240, colour)
    assert border_box(img) == (70, 0, 250, 240)
    assert np.array_equal(np.asarray(trim_borders(img)), np.asarray(content))


def test_letterbox_with_jpeg_noise_is_trimmed():
    from io import BytesIO

    buf = BytesIO()
    padded(photo(300, 150), 300, 220, "black").save(buf, "JPEG", quality=85)
    left, top, right, bottom = border_box(Image.open(buf))
    # JPEG ringing beside the photo keeps at most one 8-line block of the border
    assert (left, right) == (0, 300) and 27 <= top <= 35 and 185 <= bottom <= 193


def test_photos_without_borders_and_plain_images_are_left_alone():
    img = photo(200, 150)
    assert trim_borders(img) is img
    grey_edge = padded(photo(100, 150), 200, 150, (128, 128, 128))  # a grey wall is content, not padding
    assert trim_borders(grey_edge) is grey_edge
    white = Image.new("RGB", (200, 150), "white")  # a blank page: nothing would be left
    assert trim_borders(white) is white
    thin = padded(photo(40, 150), 200, 150, "white")  # trimming would keep less than a quarter of the width
    assert trim_borders(thin) is thin


def test_trim_is_a_recorded_input_option():
    assert input_options() == {} and input_options(trim=True) == {"trim": True}
    assert input_options(320, [1.0], trim=True) == {"fit": "whole", "long_side": 320, "scales": [1.0], "trim": True}
    # an index made before the option has no key: its queries are not trimmed
    assert inputs_of({"input_size": 224}) == {"trim": False, "layers": ["head"]}
    assert inputs_of({"fit": "whole", "long_side": 320, "scales": [1.0], "trim": True}) == {
        "long_side": 320, "scales": [1.0], "trim": True, "layers": ["head"]}
    with pytest.raises(LookalikeError):
        input_options(None, [1.0, 2.0], trim=True)
