"""Pathfinder: the generator (shapes, determinism, random labels), connectivity checked on an
independent solid re-rendering and in the pixels, honesty (ink, marker distance, a pixel
logistic regression), the official pathfinder32 images' statistics, tokens, and the LRA
release format (round trip, malformed metadata, PNG mode and size) and its CLI."""

import re

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression

from lk_study.cli import main
from lk_study.generators import pathfinder as gen
from lk_study.tasks import pathfinder as pf
from lk_study.tasks.base import BYTE_VOCAB, PAD_ID, intensity_ids


@pytest.fixture(scope="module")
def baseline():
    """320 scenes at 32x32 with LRA's curv_baseline length (6 dashes), and their images."""
    spec = gen.make_spec(32, pf.DIFFICULTIES["curv_baseline"])
    scenes = gen.generate_scenes(320, 11, spec)
    images = np.stack([gen.render(s, spec) for s in scenes])
    labels = np.array([s.label for s in scenes])
    return spec, scenes, images, labels


def test_shapes_dtypes_determinism_and_random_labels():
    images, labels = gen.generate(6, 0, gen.make_spec(32))
    assert images.shape == (6, 32, 32) and images.dtype == np.uint8
    assert labels.shape == (6,) and labels.dtype == np.int64
    assert set(labels.tolist()) <= {0, 1}
    assert images.max() == 255 and images.min() == 0  # markers saturate, background is black
    # generate is make_spec + generate_scenes + render, and a second run gives the same
    spec = gen.make_spec(32, 14)
    scenes = gen.generate_scenes(6, 0, spec)
    assert np.array_equal(np.stack([gen.render(s, spec) for s in scenes]), images)
    assert np.array_equal([s.label for s in scenes], labels)
    other, _ = gen.generate(6, 1, gen.make_spec(32))
    assert not np.array_equal(images, other)
    # image i and its label do not depend on how many images are drawn
    more_images, more_labels = gen.generate(9, 0, gen.make_spec(32))
    assert np.array_equal(more_images[:6], images) and np.array_equal(more_labels[:6], labels)
    for res, contour_length in ((16, 14), (64, 9), (128, 9)):
        big, big_labels = gen.generate(2, 0, gen.make_spec(res, contour_length))
        assert big.shape == (2, res, res) and big.dtype == np.uint8 and big_labels.shape == (2,)


def test_labels_are_bernoulli_half_per_image():
    spec = gen.make_spec(32, 14)
    labels = gen.random_labels(4000, seed=0, spec=spec)
    assert labels.dtype == np.int64 and set(labels.tolist()) == {0, 1}
    assert abs(labels.mean() - 0.5) < 4 * 0.5 / np.sqrt(len(labels))  # 4 standard errors
    assert np.array_equal(gen.random_labels(10, seed=0, spec=spec), labels[:10])
    counts = [gen.random_labels(10, seed=s, spec=spec).sum() for s in range(40)]
    assert len(set(counts)) > 3  # drawn per image, not balanced per set


def test_spec_validation():
    with pytest.raises(ValueError, match="resolution"):
        gen.make_spec(8)
    with pytest.raises(ValueError, match="contour_length"):
        gen.make_spec(32, 0)
    with pytest.raises(ValueError, match="label"):
        gen.sample_scene(gen.make_spec(32, 6), seed=0, index=0, label=2)


def test_strokes_do_not_depend_on_the_label():
    spec = gen.make_spec(32, 9)
    for index in range(3):
        s0, s1 = (gen.sample_scene(spec, 5, index, label) for label in (0, 1))
        assert len(s0.paths) == len(s1.paths)
        assert all(np.array_equal(a, b) for a, b in zip(s0.paths, s1.paths, strict=True))
        assert not np.array_equal(s0.markers, s1.markers)


def _disk(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return y**2 + x**2 <= radius**2


def _solid_components(scene: gen.Scene, spec: gen.PathfinderSpec, f: int):
    """Re-draw every path as a *solid* stroke (gaps filled: the polyline through all dash
    ends) plus the marker discs on an f-times finer grid, with its own rasteriser; return the
    8-connected component labels and the component of each marker."""
    size = spec.resolution * f
    grid = np.zeros((size, size), dtype=bool)
    for path in scene.paths:
        vertices = path.reshape(-1, 2)  # p0, q0, p1, q1, ... in order along the path
        for a, b in zip(vertices[:-1], vertices[1:], strict=True):
            n = int(np.ceil(np.hypot(*(b - a)) * f * 4)) + 2
            pts = a + np.linspace(0, 1, n)[:, None] * (b - a)
            idx = np.clip(np.floor(pts * f).astype(int), 0, size - 1)
            grid[idx[:, 0], idx[:, 1]] = True
    grid = ndimage.binary_dilation(grid, structure=_disk(spec.thickness / 2 * f))
    for m in scene.markers:
        c = np.floor(m * f).astype(int)
        stamp = np.zeros_like(grid)
        stamp[c[0], c[1]] = True
        grid |= ndimage.binary_dilation(stamp, structure=_disk(spec.marker_radius * f))
    comp, count = ndimage.label(grid, structure=np.ones((3, 3)))
    marker_comp = [comp[tuple(np.floor(m * f).astype(int))] for m in scene.markers]
    return count, marker_comp


@pytest.mark.parametrize(
    ("resolution", "contour_length", "num"), [(32, 6, 24), (32, 14, 16), (64, 14, 6), (128, 9, 4)]
)
def test_markers_connected_iff_label_on_a_solid_rerendering(resolution, contour_length, num):
    spec = gen.make_spec(resolution, contour_length)
    for scene in gen.generate_scenes(num, 2, spec):
        count, (c0, c1) = _solid_components(scene, spec, f=128 // resolution)
        assert count == len(scene.paths)  # no two paths touch, markers touch only their own
        assert c0 > 0 and c1 > 0
        assert (c0 == c1) == (scene.label == 1)


def test_rendering_follows_the_scene_with_continuous_strokes():
    spec = gen.make_spec(32, 9)
    lit_gaps, gaps = 0, 0
    for scene in gen.generate_scenes(20, 4, spec):
        image = gen.render(scene, spec)
        for path in scene.paths:
            for p, q in path:  # each dash's midpoint is lit
                y, x = np.floor((p + q) / 2).astype(int)
                assert image[y, x] > 32
            for q, p in zip(path[:-1, 1], path[1:, 0], strict=True):  # each gap's midpoint
                y, x = np.floor((p + q) / 2).astype(int)
                lit_gaps, gaps = lit_gaps + int(image[y, x] > 32), gaps + 1
        for m in scene.markers:
            assert image[tuple(np.floor(m).astype(int))] >= 200
        # no ink farther than the Lanczos filter's reach (3 px) from every dash and marker
        yy, xx = np.mgrid[0:32, 0:32] + 0.5
        cells = np.stack([yy.ravel(), xx.ravel()], 1)
        ends = np.concatenate([p.reshape(-1, 2) for p in scene.paths] + [scene.markers])
        reach = max(spec.dash_length / 2 + spec.thickness / 2, spec.marker_radius) + 3
        near = np.zeros(len(cells), dtype=bool)
        for a in ends:  # discs around dash ends and markers cover the strokes (dashes are short)
            near |= np.hypot(*(cells - a).T) <= reach
        assert (image.ravel()[~near] == 0).all()
    # antialiasing merges the dashes: most gaps are lit, as in the official images
    assert lit_gaps / gaps > 0.6


def _marker_blobs(image: np.ndarray, scene: gen.Scene, threshold: int) -> tuple[int, int]:
    blobs, _ = ndimage.label(image > threshold, structure=np.ones((3, 3)))
    return tuple(int(blobs[tuple(np.floor(m).astype(int))]) for m in scene.markers)


@pytest.mark.parametrize("contour_length", sorted(pf.DIFFICULTIES.values()))
def test_markers_connected_iff_label_in_the_pixels(contour_length):
    """In the rendered image (8-connected): a label-1 pair is joined by ink (pixels > 0); a
    label-0 pair lies in two different blobs of lit pixels (> 32), touching strokes included."""
    spec = gen.make_spec(32, contour_length)
    scenes = gen.generate_scenes(60, 6, spec)
    assert {s.label for s in scenes} == {0, 1}
    for scene in scenes:
        image = gen.render(scene, spec)
        if scene.label == 1:
            a, b = _marker_blobs(image, scene, 0)
            assert a > 0 and a == b
        else:
            a, b = _marker_blobs(image, scene, 32)
            assert a > 0 and b > 0 and a != b


def test_ink_does_not_give_the_label_away(baseline):
    _, _, images, labels = baseline
    ink = images.reshape(len(images), -1).mean(1)
    ink0, ink1 = ink[labels == 0], ink[labels == 1]
    m0, m1 = ink0.mean(), ink1.mean()
    se = np.sqrt(ink0.var() / len(ink0) + ink1.var() / len(ink1))
    assert abs(m0 - m1) < 3 * se and abs(m0 - m1) < 0.03 * ink.mean()


def _best_threshold_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    best = 0.5
    for t in np.unique(x):
        acc = ((x > t) == y).mean()
        best = max(best, acc, 1 - acc)
    return best


def test_marker_distance_does_not_give_the_label_away(baseline):
    _, scenes, _, labels = baseline
    dist = np.array([np.hypot(*(s.markers[0] - s.markers[1])) for s in scenes])
    assert _best_threshold_accuracy(dist, labels) < 0.65


def test_logistic_regression_on_pixels_is_far_from_perfect(baseline):
    _, _, images, labels = baseline
    x = images.reshape(len(images), -1) / 255.0
    model = LogisticRegression(C=1.0, max_iter=500).fit(x[:240], labels[:240])
    assert model.score(x[240:], labels[240:]) < 0.7


def test_tokens():
    images, _ = gen.generate(3, 0, gen.make_spec(32, 6))
    tokens = intensity_ids(images)
    assert tokens.shape == (3, 1024) and np.issubdtype(tokens.dtype, np.integer)
    assert tokens[1, 5 * 32 + 7] == int(images[1, 5, 7]) + 1  # row-major, intensity + 1
    assert tokens.min() >= 1 and tokens.max() == 256 and BYTE_VOCAB == 257
    assert PAD_ID == 0
    assert pf.Pathfinder().vocab_size(pf.PathfinderConfig()) == BYTE_VOCAB
    with pytest.raises(ValueError, match="uint8"):
        intensity_ids(images.astype(np.float32))


def _lra_style_read(folder):
    """The way LRA's TFDS builder reads a difficulty folder: text rows, fields split on ' ',
    the image at folder/field0/field1, the label int(field 3)."""
    items = []
    for meta in sorted((folder / "metadata").glob("*.npy"), key=lambda p: int(p.stem)):
        for row in meta.read_text().split("\n")[:-1]:
            fields = row.split(" ")
            items.append((folder / fields[0] / fields[1], int(fields[3])))
    return items


def test_release_round_trip(tmp_path):
    folder = pf.write_release(tmp_path, size=12, seed=3, difficulty="curv_baseline", batch_size=5)
    assert folder == tmp_path / "curv_baseline"
    assert sorted(p.name for p in (folder / "metadata").iterdir()) == ["0.npy", "1.npy", "2.npy"]
    first = (folder / "metadata" / "0.npy").read_text().splitlines()[0].split(" ")
    assert first[:3] == ["imgs/0", "sample_0.png", "0"] and len(first) == 11
    with Image.open(folder / "imgs" / "2" / "sample_1.png") as im:
        assert im.mode == "L" and im.size == (32, 32)
    images, labels, skipped = pf.read_release(tmp_path, "curv_baseline")
    want_images, want_labels = gen.generate(12, 3, gen.make_spec(32, 6))
    assert skipped == 0 and images.dtype == np.uint8 and labels.dtype == np.int64
    assert np.array_equal(images, want_images) and np.array_equal(labels, want_labels)
    lra = _lra_style_read(folder)
    assert [label for _, label in lra] == labels.tolist()
    assert np.array_equal(np.asarray(Image.open(lra[11][0])), images[11])


def test_read_release_takes_binary_npy_metadata(tmp_path):
    folder = pf.write_release(tmp_path, size=4, seed=0, difficulty="curv_baseline")
    meta = folder / "metadata" / "0.npy"
    rows = [line.split(" ") for line in meta.read_text().splitlines()]
    meta.unlink()
    np.save(meta, np.array(rows))  # what the original generator's np.save writes
    images, labels, _ = pf.read_release(tmp_path)
    want_images, want_labels = gen.generate(4, 0, gen.make_spec(32, 6))
    assert np.array_equal(images, want_images) and np.array_equal(labels, want_labels)


@pytest.fixture()
def release(tmp_path):
    pf.write_release(tmp_path, size=4, seed=0, difficulty="curv_baseline")
    return tmp_path, tmp_path / "curv_baseline" / "metadata" / "0.npy"


def _edit_row(meta, row: int, edit) -> None:
    lines = meta.read_text().splitlines()
    lines[row - 1] = edit(lines[row - 1])
    meta.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda r: r.replace("sample_1.png", "sample_99.png"), "image not found"),
        (lambda r: " ".join(f if i != 3 else "x" for i, f in enumerate(r.split())), "label"),
        (lambda r: " ".join(r.split()[:3]), "at least 4"),
    ],
    ids=["missing-image", "bad-label", "too-few-fields"],
)
def test_malformed_rows_error_or_skip(release, edit, problem):
    root, meta = release
    _edit_row(meta, 2, edit)
    where = f"{meta.parent.parent}, metadata/{meta.name} row 2: "  # folder, file and row
    with pytest.raises(ValueError, match=re.escape(where) + ".*" + problem):
        pf.read_release(root)
    images, labels, skipped = pf.read_release(root, on_bad_rows="skip")
    assert skipped == 1 and len(images) == len(labels) == 3


def test_empty_image_file_is_a_bad_row(release):
    root, meta = release
    (meta.parent.parent / "imgs" / "0" / "sample_0.png").write_bytes(b"")  # as LRA's sample_172
    with pytest.raises(ValueError, match=r"row 1: unreadable image"):
        pf.read_release(root)
    assert pf.read_release(root, on_bad_rows="skip")[2] == 1


def test_missing_folder_and_bad_arguments(tmp_path, release):
    expected = tmp_path / "nowhere" / "curv_baseline" / "metadata"
    with pytest.raises(FileNotFoundError, match=re.escape(str(expected))):
        pf.read_release(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="curv_contour_length_9/metadata"):
        pf.read_release(release[0], "curv_contour_length_9")
    with pytest.raises(ValueError, match="on_bad_rows"):
        pf.read_release(release[0], on_bad_rows="ignore")
    with pytest.raises(ValueError, match="curv_baseline"):
        pf.write_release(tmp_path, 1, 0, difficulty="hard")


def test_cli_generate_writes_every_difficulty(tmp_path, capsys):
    assert main(["data", "generate", "pathfinder", "--out", str(tmp_path), "--num", "2"]) == 0
    assert {p.name for p in tmp_path.iterdir()} == set(pf.DIFFICULTIES)
    out = capsys.readouterr().out
    assert "curv_contour_length_14: 2/2 images" in out
    assert all(f"pathfinder: wrote {tmp_path / d}" in out for d in pf.DIFFICULTIES)
    for difficulty, contour_length in pf.DIFFICULTIES.items():
        images, labels, _ = pf.read_release(tmp_path, difficulty)
        want = gen.generate(2, 0, gen.make_spec(32, contour_length))
        assert np.array_equal(images, want[0]) and np.array_equal(labels, want[1])


# official pathfinder32 images (drewlinsley/pathfinder at LRA's settings), 300 per difficulty,
# measured in shared/notes/real_data.md: mean intensity, lit fraction (pixels > 32), grey
# levels per image, lit blobs per image (4-connected, scipy.ndimage.label's default)
OFFICIAL = {
    "curv_baseline": (12.8, 0.088, 60, 8.2),
    "curv_contour_length_9": (15.5, 0.108, 63, 10.7),
    "curv_contour_length_14": (20.4, 0.146, 64, 16.6),
}


@pytest.mark.parametrize("difficulty", sorted(OFFICIAL))
def test_images_have_the_official_statistics(difficulty):
    mean, lit, levels, blobs = OFFICIAL[difficulty]
    images, _ = gen.generate(300, 1, gen.make_spec(32, pf.DIFFICULTIES[difficulty]))
    ours_lit = (images > 32).mean()
    ours_levels = np.array([len(np.unique(im)) for im in images])
    ours_blobs = np.mean([ndimage.label(im > 32)[1] for im in images])
    assert abs(ours_lit / lit - 1) <= 0.2, ours_lit
    assert ours_levels.mean() >= 45 and np.median(ours_levels) >= 45, ours_levels.mean()
    assert abs(ours_blobs / blobs - 1) <= 0.3, ours_blobs
    assert abs(images.mean() / mean - 1) <= 0.25, images.mean()


def test_release_png_mode_and_size_are_checked(release):
    root, meta = release
    png = meta.parent.parent / "imgs" / "0" / "sample_1.png"
    with Image.open(png) as im:
        grey = np.asarray(im)
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(png)  # RGB with R = G = B: same grey
    images, _, _ = pf.read_release(root)
    assert np.array_equal(images[1], grey)
    Image.fromarray(np.zeros((32, 32, 4), dtype=np.uint8)).save(png)  # RGBA
    with pytest.raises(ValueError, match=r"row 2: image .*sample_1.png: image mode RGBA .*alpha"):
        pf.read_release(root)
    Image.fromarray(np.zeros((32, 32), dtype=np.uint16)).save(png)  # 16-bit grey
    with pytest.raises(ValueError, match=r"row 2: image .*sample_1.png: image mode I;16.*16-bit"):
        pf.read_release(root)
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(png)
    with pytest.raises(ValueError, match=r"row 2: .*sample_1.png is 28x28, the first.* 32x32"):
        pf.read_release(root)
    with pytest.raises(ValueError, match=r"row 2: image .*sample_1.png is 28x28, expected 32x32"):
        pf.read_release(root, resolution=32)
    with pytest.raises(ValueError, match=r"row 1: .*sample_0.png is 32x32, expected 64x64"):
        pf.read_release(root, resolution=64)
    assert pf.read_release(root, on_bad_rows="skip", resolution=32)[2] == 1
