"""The image task's pixel rules on the user path (a saved DatasetDict -> task.source: PATH ->
prepare): sizes under each ``task.resize`` policy, mixed sizes, RGB -> grey by the luma
formula, and the modes and dtypes it refuses, each error naming split, row and what it found."""

import datasets
import numpy as np
import PIL.Image
import pytest

from lk_study.config import Config, ConfigError, with_overrides
from lk_study.tasks import Split, prepare
from lk_study.tasks.image import PixelError, to_grey


def grey_image(size: int, value: int = 100, mode: str = "L") -> PIL.Image.Image:
    """A size x size image with a gradient (so that placement is visible) around ``value``."""
    y, x = np.mgrid[0:size, 0:size]
    pixels = ((value + 3 * y + x) % 256).astype(np.uint8)
    return PIL.Image.fromarray(pixels).convert(mode)


def save(tmp_path, train, test=None, name="imgs"):
    """A CIFAR-10-schema DatasetDict (img, label) with splits train/test -> its folder."""
    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64")})

    def split(images):
        return datasets.Dataset.from_dict(
            {"img": images, "label": [i % 10 for i in range(len(images))]}, features=features
        )

    path = tmp_path / name
    test = test if test is not None else train
    datasets.DatasetDict({"train": split(train), "test": split(test)}).save_to_disk(str(path))
    return path


def prepared(path, **task) -> tuple[Split, Split]:
    overrides = {"task.name": "image", "task.source": str(path)}
    overrides.update({f"task.{k}": v for k, v in task.items()})
    paths = prepare(with_overrides(Config(), overrides).task)
    return Split(paths["train"]), Split(paths["validation"])


def pixels(split: Split, row: int, side: int = 32) -> np.ndarray:
    """Row ``row``'s tokens back to an (side, side) uint8 image (token = intensity + 1)."""
    ids = split.batch(np.array([row]))["ids"][0].numpy()
    assert ids.shape == (side * side,)
    return (ids - 1).astype(np.uint8).reshape(side, side)


def test_rgb_to_grey_is_the_itu_r_601_2_luma_on_a_known_pixel(tmp_path):
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[5, 7] = (200, 100, 50)  # L = 0.299*200 + 0.587*100 + 0.114*50 = 124.2 -> 124
    rgb[6, 7] = (255, 255, 255)
    rgb[7, 7] = (10, 250, 3)  # 2.99 + 146.75 + 0.342 = 150.082 -> 150
    train, _ = prepared(save(tmp_path, [PIL.Image.fromarray(rgb)]))
    grey = pixels(train, 0)
    assert grey[5, 7] == 124 and grey[6, 7] == 255 and grey[7, 7] == 150 and grey[0, 0] == 0
    # LRA's tf.image.rgb_to_grayscale: weights 0.2989, 0.5870, 0.1140, truncated: within 1
    tf_like = np.floor(rgb.astype(np.float64) @ [0.2989, 0.5870, 0.1140] / 255 * 255.5)
    assert np.abs(grey.astype(int) - tf_like.astype(int)).max() <= 1
    # a palette image goes through its RGB colours
    palette = PIL.Image.fromarray(rgb).convert("P", palette=PIL.Image.Palette.ADAPTIVE)
    assert to_grey(palette)[5, 7] == to_grey(palette.convert("RGB"))[5, 7]


def test_images_of_the_expected_size_are_taken_as_they_are(tmp_path):
    image = grey_image(32)
    train, test = prepared(save(tmp_path, [image, image]))
    assert len(train) == len(test) == 2
    assert np.array_equal(pixels(train, 1), np.asarray(image))


@pytest.mark.parametrize("side", [8, 28, 40])
def test_another_size_is_an_error_by_default_naming_split_row_and_sizes(tmp_path, side):
    path = save(tmp_path, [grey_image(32), grey_image(32), grey_image(side)])
    pattern = (
        rf"split train, row 2: image is {side}x{side} \(width x height\), expected 32x32 "
        rf"\(set task.resize: pad or resize, or task.resolution: {side}\)"
    )
    with pytest.raises(ValueError, match=pattern):
        prepared(path)


def test_mixed_sizes_in_a_split_name_the_first_odd_row(tmp_path):
    rows = [grey_image(28), grey_image(28), grey_image(32), grey_image(28)]
    path = save(tmp_path, [grey_image(32)], test=rows)
    with pytest.raises(ValueError, match=r"split test, row 0: image is 28x28.*expected 32x32"):
        prepared(path)
    # the 28x28 rows meet the rule one by one: with resolution 28 the 32x32 row is the odd one
    with pytest.raises(ValueError, match=r"split train, row 0: image is 32x32.*expected 28x28"):
        prepared(path, resolution=28)
    with pytest.raises(ValueError, match=r"split test, row 2: image is 32x32.*expected 28x28"):
        prepared(save(tmp_path, [grey_image(28)], test=rows, name="b"), resolution=28)
    _, test = prepared(path, resize="pad")
    assert len(test) == 4


def test_non_square_images_say_which_key_to_set(tmp_path):
    odd = PIL.Image.fromarray(np.full((20, 30), 7, dtype=np.uint8))  # 30 wide, 20 high
    with pytest.raises(ValueError, match=r"row 0: image is 30x20 .*task.resize: resize\)"):
        prepared(save(tmp_path, [odd]))
    train, _ = prepared(save(tmp_path, [odd], name="b"), resize="pad")
    grey = pixels(train, 0)
    assert (grey[6:26, 1:31] == 7).all() and grey.sum() == 7 * 20 * 30  # top 6, left 1


@pytest.mark.parametrize("side", [8, 28])
def test_pad_centres_smaller_images_on_black(tmp_path, side):
    image = grey_image(side, value=50)
    train, _ = prepared(save(tmp_path, [image]), resize="pad")
    grey = pixels(train, 0)
    lo = (32 - side) // 2
    assert np.array_equal(grey[lo : lo + side, lo : lo + side], np.asarray(image))
    grey[lo : lo + side, lo : lo + side] = 0
    assert (grey == 0).all()


def test_pad_refuses_larger_images(tmp_path):
    path = save(tmp_path, [grey_image(32), grey_image(40)])
    with pytest.raises(ValueError, match=r"split train, row 1: image is 40x40.*pad only enlarges"):
        prepared(path, resize="pad")


@pytest.mark.parametrize("side", [8, 28, 40])
def test_resize_resamples_with_bicubic(tmp_path, side):
    image = grey_image(side)
    train, _ = prepared(save(tmp_path, [image, grey_image(32)]), resize="resize")
    want = np.asarray(image.resize((32, 32), PIL.Image.Resampling.BICUBIC))
    assert np.array_equal(pixels(train, 0), want)
    assert np.array_equal(pixels(train, 1), np.asarray(grey_image(32)))  # 32x32 untouched


def test_resolution_sets_the_sequence_length(tmp_path):
    train, _ = prepared(save(tmp_path, [grey_image(8)]), resolution=16, resize="pad")
    assert pixels(train, 0, side=16)[4:12, 4:12].tolist() == np.asarray(grey_image(8)).tolist()


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        (grey_image(32, mode="RGBA"), "image mode RGBA has an alpha channel"),
        (grey_image(32, mode="LA"), "image mode LA has an alpha channel"),
        (PIL.Image.fromarray(np.full((32, 32), 300, dtype=np.uint16)), "image mode I;16"),
        (
            PIL.Image.fromarray(np.full((32, 32), 0.5, dtype=np.float32)),
            r"mode F image has dtype float32 with values in \[0.5, 0.5\]; expected whole",
        ),
        (grey_image(32, mode="CMYK"), "image mode CMYK is not supported"),
    ],
    ids=["rgba", "la", "16-bit", "float-0-1", "cmyk"],
)
def test_refused_modes_name_split_row_and_mode(tmp_path, image, problem):
    path = save(tmp_path, [grey_image(32), image, grey_image(32)])
    with pytest.raises(ValueError, match=rf"split train, row 1: {problem}.*on_bad_rows: skip"):
        prepared(path)
    train, _ = prepared(path, on_bad_rows="skip")
    assert len(train) == 2


def test_whole_valued_float_and_integer_pixels_are_taken():
    values = np.arange(32 * 32).reshape(32, 32) % 256
    for array in (values.astype(np.float32), values.astype(np.int64), values[:, :, None]):
        assert np.array_equal(to_grey(array), values.astype(np.uint8))
    assert np.array_equal(to_grey(PIL.Image.fromarray(values.astype(np.float32))), values)
    assert np.array_equal(to_grey(PIL.Image.fromarray(values.astype(np.int32))), values)
    rgb = np.zeros((2, 2, 3), dtype=np.int64)
    rgb[0, 0] = (200, 100, 50)
    assert to_grey(rgb)[0, 0] == 124
    assert to_grey(PIL.Image.new("1", (2, 2), 1)).tolist() == [[255, 255], [255, 255]]


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.full((4, 4), 256.0), r"values in \[256, 256\]"),
        (np.full((4, 4), -1), r"values in \[-1, -1\]"),
        (np.full((4, 4), np.nan), "values in"),
        (np.ones((4, 4), dtype=bool), "dtype bool"),
        (np.zeros((4, 4, 4), dtype=np.uint8), r"shape \(4, 4, 4\)"),
        (np.zeros((4,), dtype=np.uint8), r"shape \(4,\)"),
    ],
    ids=["above-255", "negative", "nan", "bool", "four-channels", "1-d"],
)
def test_refused_arrays(array, problem):
    with pytest.raises(PixelError, match=problem):
        to_grey(array)


def test_resize_key_is_validated():
    with pytest.raises(ConfigError, match=r"task.resize: must be one of error, pad, resize"):
        with_overrides(Config(), {"task.name": "image", "task.resize": "crop"})
    cfg = with_overrides(Config(), {"task.name": "image"}).task
    assert cfg.resize == "error" and cfg.resolution == 32
