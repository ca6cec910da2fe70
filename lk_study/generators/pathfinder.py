"""Pathfinder images (Linsley et al. 2018; Kim, Linsley et al. 2020) as Long Range Arena
uses them: two endpoint markers (discs) and several curved paths on a black R×R image; the
label is 1 when one path joins the two markers and 0 when they sit on two different paths.
``lk_study.tasks.pathfinder`` writes and reads them in LRA's release layout.

Usage: ``generate(size, seed, make_spec(resolution, contour_length))`` -> (images uint8
(N, R, R), labels int64 (N,)); LRA's difficulties ``curv_baseline``,
``curv_contour_length_9`` and ``curv_contour_length_14`` are contour lengths 6, 9 and 14.

Construction: numpy + Pillow, after the description of the original
``snakes2`` generator (drewlinsley/pathfinder), tuned so that its images have the official
pathfinder32 images' statistics (below). Lengths are pixels at 32×32 and scale with
s = R/32: dash and gap lengths with s, stroke thickness, marker radius and clearances with
√s, so larger images have longer, relatively thinner strokes, as in LRA's 64/128 sets::

    path        a start point and K paddles ("dashes"); step k is a gap of ``gap_length``
                (0.75; none before the first dash) then a flat-ended dash of ``dash_length``
                (2.0) and ``thickness`` (0.5), both along direction θ_k. The path's centre
                line is the polyline through all dash ends, gaps included
    turning     θ_k = θ_{k-1} + κ + ε_k, κ ~ U(±curvature) once per path (0.45 rad),
                ε_k ~ U(±jitter) per dash (0.35 rad). That direction and ``max_tries`` - 1 (11)
                others, θ_{k-1} + U(±(curvature + jitter)), are tested at once (any direction
                for the first dash); the first that fits *and* leaves a step of room ahead is
                taken, else the roomiest that fits
    backtrack   a path whose next dash does not fit removes its last f dashes at its f-th
                failure since it last got longer (a new direction when it is back at its
                start); the target pair restarts after 2 K failures, a distractor after 2 K
    clearance   every centre-line point (sampled every 0.5 px, gaps included) keeps
                r_a + r_b + ``min_gap`` (0.8) from every point of another path and from its
                own path before its last ``own_skip`` (2) dashes, where r is half the
                thickness or, for the four target ends, ``marker_radius`` (2.5); everything
                stays ``padding`` (0.5) inside the image. So the paths' geometry never touches
                or crosses and connectivity is unambiguous; in the pixels, strokes 0.8 px
                apart touch (two paths share a blob of lit pixels in 3 % of the images at
                K = 6, 15 % at K = 14)
    targets     two paths A, B of ``contour_length`` dashes (14; LRA's folders use 6, 9, 14),
                grown alternately dash by dash from starts ``seed_distance`` (5.5) apart
    distractors ``num_distractors`` paths (4 dashes' worth at 32: 4 // distractor_length,
                round(4 s^0.4) dashes' worth at other sizes) of ``distractor_length`` = K // 3
                dashes; each of up to 4 attempts starts at the first of 12 uniform points with
                half a step of room; one that does not fit is left out
    markers     chosen last, so the strokes of an image do not depend on its label. Of the
                same-path pairs (start, end) of A or of B and the cross pairs (start A, end B)
                or (start B, end A), take the same/cross combination whose two distances are
                closest: label 1 marks the same-path pair, label 0 the cross pair. So the
                marker distance does not give the label away
    pixel check the scene is drawn again (from the same random stream) when, in the image
                with the cross pair's markers, those two markers lie in one 8-connected blob
                of lit pixels (> 32): then touching strokes would join A and B, and label 0
                would be false in the pixels. The check does not look at the label
    rendering   dashes and marker discs (coverage 1, white on black) at ``antialias``× (4)
                supersampling, downsampled with Pillow's Lanczos filter
                (``Image.Resampling.LANCZOS``, negative lobes clipped to 0), which merges the
                dashes into continuous strokes with many grey levels, as the official
                generator's 2x Lanczos rendering does; then scaled so that the brightest
                pixel (a marker) is 255, rounded to uint8. At R = 32 a gap between dashes is
                lit (> 32) three times in four; at R >= 64 gaps are longer than the filter
                merges, and the statistics below were tuned at 32 only

Labels are drawn per image, 1 with probability 1/2 (as the official generator does; not
exactly balanced): label i is the i-th uniform draw of ``SeedSequence((seed, R,
contour_length), spawn_key=(0,))`` being < 1/2; image i draws its geometry from
spawn_key ``(1, i)``. Output is a deterministic function of (seed, parameters) and image i
does not depend on how many images are drawn.

Statistics over 300 images per difficulty, official pathfinder32 (measured in
``shared/notes/real_data.md``) / this generator at seed 0. Lit = pixel > 32; blobs = lit
4-connected components (``scipy.ndimage.label``'s default structure); border = lit share of
the outermost ring of pixels. ``tests/test_pathfinder.py`` checks lit fraction (±20 %), grey
levels (≥ 45), blobs (±30 %) and mean intensity (±25 %) at another seed::

    difficulty               mean         lit (> 32)    grey levels  blobs        border
    curv_baseline            12.8 / 12.7  .088 / .093   60 / 94      8.2 / 8.5    .0054 / .0029
    curv_contour_length_9    15.5 / 14.0  .108 / .109   63 / 104     10.7 / 10.3  .0033 / .0026
    curv_contour_length_14   20.4 / 16.9  .146 / .143   64 / 121     16.6 / 15.1  .0017 / .0039
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

_SKIP_OWN = 2  # a path's own last dashes are exempt from the clearance check (at least)
_TARGET_BUDGET = 2  # backtracking failures per target dash before the pair restarts
_DISTRACTOR_STARTS = 4  # attempts to place a distractor before leaving it out
_DISTRACTOR_BUDGET = 2  # backtracking failures per distractor dash before an attempt ends
_DISTRACTOR_ROOM = 0.5  # free space (in steps) a distractor's start needs around it
_LIT = 32  # a pixel above this is lit (the statistics and the pixel check)
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity


@dataclass(frozen=True)
class PathfinderSpec:
    """Generator parameters in pixels of the R×R image (``make_spec`` fills the defaults)."""

    resolution: int
    contour_length: int
    distractor_length: int
    num_distractors: int
    dash_length: float
    gap_length: float
    thickness: float
    marker_radius: float
    min_gap: float
    seed_distance: float
    padding: float
    curvature: float
    jitter: float
    antialias: int = 4
    max_tries: int = 12
    max_restarts: int = 200

    def __post_init__(self) -> None:
        if self.resolution < 16:
            raise ValueError(f"resolution must be >= 16, got {self.resolution}")
        for name in ("contour_length", "distractor_length", "antialias", "max_tries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_distractors < 0:
            raise ValueError(f"num_distractors must be >= 0, got {self.num_distractors}")
        for name in ("dash_length", "gap_length", "thickness", "marker_radius", "min_gap"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def own_skip(self) -> int:
        """How many of a path's own last dashes its next dash need not keep clear of: 2, or
        more where a straight path could not otherwise leave its start marker's clearance
        (below R = 20 with the default lengths)."""
        clear = self.marker_radius + self.thickness / 2 + self.min_gap
        step = self.gap_length + self.dash_length
        return max(_SKIP_OWN, math.ceil(1 + (clear - self.dash_length) / step))

    @property
    def sample_spacing(self) -> float:
        """Spacing of the centre-line points that the clearance checks store."""
        return 0.5 * math.sqrt(self.resolution / 32)


def make_spec(
    resolution: int = 32,
    contour_length: int = 14,
    *,
    num_distractors: int | None = None,
    distractor_length: int | None = None,
    dash_length: float | None = None,
    gap_length: float | None = None,
    thickness: float | None = None,
    marker_radius: float | None = None,
    curvature: float = 0.45,
    jitter: float = 0.35,
    antialias: int = 4,
) -> PathfinderSpec:
    """The spec for an R×R image, with the module docstring's defaults scaled by s = R/32."""
    s = resolution / 32
    r = math.sqrt(s)
    dl = distractor_length if distractor_length is not None else max(1, contour_length // 3)
    if num_distractors is None:
        budget = round(4 * s**0.4)  # distractor dashes: 4 at 32, 5 at 64, 7 at 128
        num_distractors = budget // dl
    return PathfinderSpec(
        resolution=resolution,
        contour_length=contour_length,
        distractor_length=dl,
        num_distractors=num_distractors,
        dash_length=dash_length if dash_length is not None else 2.0 * s,
        gap_length=gap_length if gap_length is not None else 0.75 * s,
        thickness=thickness if thickness is not None else 0.5 * r,
        marker_radius=marker_radius if marker_radius is not None else 2.5 * r,
        min_gap=0.8 * r,
        seed_distance=5.5 * s,
        padding=0.5 * r,
        curvature=curvature,
        jitter=jitter,
        antialias=antialias,
    )


@dataclass(frozen=True)
class Scene:
    """One image's geometry: ``paths[j]`` is (num_dashes, 2, 2), dash k running from
    ``paths[j][k, 0]`` to ``paths[j][k, 1]`` in (y, x) pixel coordinates (pixel (i, j) covers
    [i, i+1) × [j, j+1)); ``paths[0]`` and ``paths[1]`` are the targets; ``markers`` (2, 2)
    are the marker centres."""

    paths: tuple[np.ndarray, ...]
    markers: np.ndarray
    label: int


class _Points:
    """Centre-line sample points placed so far, with owner path, dash index and radius."""

    def __init__(self, capacity: int) -> None:
        self.xy = np.empty((capacity, 2))
        self.owner = np.empty(capacity, dtype=np.int64)
        self.dash = np.empty(capacity, dtype=np.int64)
        self.radius = np.empty(capacity)
        self.n = 0

    def add(self, xy: np.ndarray, owner: int, dash: int, radius: float) -> None:
        m = len(xy)
        if self.n + m > len(self.xy):  # grow
            for name in ("xy", "owner", "dash", "radius"):
                old = getattr(self, name)
                new = np.empty((2 * len(old) + m, *old.shape[1:]), dtype=old.dtype)
                new[: self.n] = old[: self.n]
                setattr(self, name, new)
        sl = slice(self.n, self.n + m)
        self.xy[sl], self.owner[sl], self.dash[sl], self.radius[sl] = xy, owner, dash, radius
        self.n += m

    def remove(self, owner: int, dash: int) -> None:
        """Drop the points of ``owner``'s dashes >= ``dash`` (backtracking)."""
        n = self.n
        keep = (self.owner[:n] != owner) | (self.dash[:n] < dash)
        m = int(keep.sum())
        for name in ("xy", "owner", "dash", "radius"):
            arr = getattr(self, name)
            arr[:m] = arr[:n][keep]
        self.n = m

    def obstacles(
        self, centre: np.ndarray, reach: float, owner: int, dash: int, skip: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(xy (n, 2), radius (n,)) of the points within ``reach`` (max-norm) of ``centre`` that
        dash ``dash`` of path ``owner`` must keep clear of: other paths' points, and its own
        before dash ``dash`` - ``skip`` (consecutive dashes cannot meet)."""
        n = self.n
        sel = (self.owner[:n] != owner) | (self.dash[:n] < dash - skip)
        sel &= (np.abs(self.xy[:n] - centre) < reach).all(axis=1)
        return self.xy[:n][sel], self.radius[:n][sel]


def _unit(theta: float) -> np.ndarray:
    return np.array([math.sin(theta), math.cos(theta)])


def _inside(xy: np.ndarray, lo: float, hi: float) -> bool:
    return bool((xy >= lo).all() and (xy <= hi).all())


class _Path:
    """A path being grown to ``length`` dashes: start, per-path curvature κ, its dashes and
    their directions. With ``end_radius`` its far end must keep a marker's clearance."""

    def __init__(
        self,
        owner: int,
        start: np.ndarray,
        theta: float,
        kappa: float,
        length: int,
        end_radius: float | None = None,
    ) -> None:
        self.owner, self.start, self.theta0, self.kappa = owner, start, theta, kappa
        self.length, self.end_radius = length, end_radius
        self.dashes: list[np.ndarray] = []
        self.thetas: list[float] = []
        self.longest = 0  # most dashes reached so far
        self.fails = 0  # failures since then: each backtracks one dash deeper

    def tail(self) -> np.ndarray:
        return self.dashes[-1][1] if self.dashes else self.start


@functools.lru_cache(maxsize=64)
def _samples(length: float, spacing: float) -> np.ndarray:
    """Positions 0..length along a step where its centre-line points are stored."""
    return np.linspace(0.0, length, max(2, math.ceil(length / spacing) + 1))


def _place_dash(rng: np.random.Generator, spec: PathfinderSpec, pts: _Points, path: _Path) -> bool:
    """Append the next dash to ``path`` (its points to ``pts``); False when none of
    ``max_tries`` directions fits. The directions (the path's own turn first, then uniform
    turns in ±(curvature + jitter); any direction for the first dash) are tested at once,
    each as the straight step tail -> gap -> dash against every obstacle point."""
    k = len(path.dashes)
    tries = spec.max_tries
    lead = spec.gap_length if k > 0 else 0.0
    length = lead + spec.dash_length
    x = rng.uniform(-1.0, 1.0, tries)
    if k == 0:
        thetas = math.pi * x
        thetas[0] = path.theta0
    else:
        thetas = path.thetas[-1] + (spec.curvature + spec.jitter) * x
        thetas[0] = path.thetas[-1] + path.kappa + spec.jitter * x[0]
    u = np.empty((tries, 2))  # (T, 2) unit directions
    np.sin(thetas, out=u[:, 0])
    np.cos(thetas, out=u[:, 1])
    tail = path.tail()
    end = tail + length * u  # (T, 2); the box is convex, so tail and end inside suffice
    r = spec.thickness / 2
    end_r = path.end_radius if path.end_radius is not None and k == path.length - 1 else None
    lo = spec.padding + (r if end_r is None else max(r, end_r))
    ok = ((end >= lo) & (end <= spec.resolution - lo)).all(axis=1)  # (T,)
    if not ok.any():
        return False
    step = spec.gap_length + spec.dash_length
    reach = length + step + max(r, end_r or 0.0) + spec.min_gap + spec.marker_radius
    obs, obs_r = pts.obstacles(tail, reach, path.owner, k, spec.own_skip)
    # room ahead: the free distance around each end, to the walls and to the obstacles
    room = np.minimum(end - lo, spec.resolution - lo - end).min(axis=1)  # (T,)
    if len(obs):
        rel = obs - tail  # (n, 2)
        along = rel @ u.T  # (n, T) projection on each direction
        proj = np.minimum(np.maximum(along, 0.0), length)
        rel2 = (rel**2).sum(1)[:, None]  # (n, 1)
        d2 = rel2 - 2 * proj * along + proj**2  # (n, T) squared distance to the step
        ok &= (d2 >= ((obs_r + r + spec.min_gap) ** 2)[:, None]).all(axis=0)
        e2 = rel2 - 2 * length * along + length**2  # (n, T) squared distance to the end
        if end_r is not None:
            ok &= (e2 >= ((obs_r + end_r + spec.min_gap) ** 2)[:, None]).all(axis=0)
        room = np.minimum(room, (np.sqrt(e2) - (obs_r + r + spec.min_gap)[:, None]).min(0))
    if not ok.any():
        return False
    # the first direction (the path's own turn first) with a step's room ahead, else the roomiest
    roomy = ok & (room >= step)
    i = int(np.argmax(roomy)) if roomy.any() else int(np.argmax(np.where(ok, room, -np.inf)))
    pts.add(tail + _samples(length, spec.sample_spacing)[:, None] * u[i], path.owner, k, r)
    if end_r is not None:
        pts.add(end[i][None], path.owner, k, end_r)
    start = tail + lead * u[i]
    path.dashes.append(np.stack([start, end[i]]))
    path.thetas.append(float(thetas[i]))
    return True


def _grow(
    rng: np.random.Generator, spec: PathfinderSpec, pts: _Points, paths: list[_Path], budget: int
) -> bool:
    """Grow ``paths`` alternately to their lengths. A path whose next dash does not fit
    backtracks: its f-th failure since it last reached a new length removes its last f dashes
    (all of them: it restarts in a new direction). False after ``budget`` failures in all."""
    while True:
        path = min(paths, key=lambda p: len(p.dashes) - p.length)  # the least grown
        if len(path.dashes) == path.length:
            return True
        if _place_dash(rng, spec, pts, path):
            if len(path.dashes) > path.longest:
                path.longest, path.fails = len(path.dashes), 0
            continue
        budget -= 1
        if budget < 0:
            return False
        path.fails += 1
        keep = max(0, len(path.dashes) - path.fails)
        del path.dashes[keep:], path.thetas[keep:]
        pts.remove(path.owner, keep)
        if keep == 0:
            path.theta0 = rng.uniform(-math.pi, math.pi)


_Pair = tuple[np.ndarray, np.ndarray]


def _marker_pairs(targets: list[np.ndarray]) -> tuple[_Pair, _Pair]:
    """(same-path pair, cross pair): of the pairs (start, end) of A or of B, and (start A,
    end B) or (start B, end A), the same/cross combination whose distances are closest, so
    that the marker distance does not give the label away."""
    ends = [(p[0, 0], p[-1, 1]) for p in targets]  # (start, end) of A and of B
    cross = [(ends[0][0], ends[1][1]), (ends[1][0], ends[0][1])]
    _, i, j = min(
        (abs(math.dist(*s) - math.dist(*c)), i, j)
        for i, s in enumerate(ends)
        for j, c in enumerate(cross)
    )
    return ends[i], cross[j]


def _targets(
    rng: np.random.Generator, spec: PathfinderSpec, pts: _Points
) -> list[np.ndarray] | None:
    """Target paths A and B, grown alternately from starts ``seed_distance`` apart, all four
    ends with a marker's clearance; None (the caller restarts) when they do not fit."""
    mr = spec.marker_radius
    lo, hi = mr + spec.padding, spec.resolution - mr - spec.padding
    a0 = rng.uniform(lo, hi, size=2)
    for _ in range(spec.max_tries):
        b0 = a0 + spec.seed_distance * _unit(rng.uniform(-math.pi, math.pi))
        if _inside(b0, lo, hi):
            break
    else:
        return None
    pts.add(a0[None], 0, -1, mr)  # dash -1: kept when the path backtracks
    pts.add(b0[None], 1, -1, mr)
    thetas = rng.uniform(-math.pi, math.pi, size=2)
    kappas = rng.uniform(-spec.curvature, spec.curvature, size=2)
    paths = [
        _Path(j, s, thetas[j], kappas[j], spec.contour_length, end_radius=mr)
        for j, s in enumerate((a0, b0))
    ]
    if not _grow(rng, spec, pts, paths, budget=_TARGET_BUDGET * spec.contour_length):
        return None
    return [np.stack(p.dashes) for p in paths]


def _distractor(
    rng: np.random.Generator, spec: PathfinderSpec, pts: _Points, owner: int
) -> np.ndarray | None:
    """A distractor path in the room left, or None. Each of ``_DISTRACTOR_STARTS`` attempts
    starts at the first of ``max_tries`` uniform points with half a step's room around it."""
    lo = spec.padding + spec.thickness / 2
    step = spec.gap_length + spec.dash_length
    for _ in range(_DISTRACTOR_STARTS):
        starts = rng.uniform(lo, spec.resolution - lo, size=(spec.max_tries, 2))  # (S, 2)
        theta = rng.uniform(-math.pi, math.pi)
        kappa = rng.uniform(-spec.curvature, spec.curvature)
        obs, obs_r = pts.xy[: pts.n], pts.radius[: pts.n]
        if len(obs):
            d = np.sqrt(((starts[:, None, :] - obs[None]) ** 2).sum(-1))  # (S, n)
            room = (d - (obs_r + spec.thickness / 2 + spec.min_gap)).min(axis=1)  # (S,)
            if not (room >= _DISTRACTOR_ROOM * step).any():
                continue
            start = starts[int(np.argmax(room >= _DISTRACTOR_ROOM * step))]
        else:
            start = starts[0]
        n0 = pts.n
        path = _Path(owner, start, theta, kappa, spec.distractor_length)
        if _grow(rng, spec, pts, [path], budget=_DISTRACTOR_BUDGET * spec.distractor_length):
            return np.stack(path.dashes)
        pts.n = n0  # drop the partial path (its points are the last ones added)
    return None


def _rng(seed: int, spec: PathfinderSpec, key: tuple[int, ...]) -> np.random.Generator:
    entropy = (seed, spec.resolution, spec.contour_length)
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=key))


def random_labels(size: int, seed: int, spec: PathfinderSpec) -> np.ndarray:
    """(size,) int64: label i is 1 when the i-th uniform draw is < 1/2 (Bernoulli(1/2) per
    image, not balanced; the first n labels do not depend on ``size``)."""
    return (_rng(seed, spec, (0,)).random(size) < 0.5).astype(np.int64)


def _joined_in_pixels(
    paths: Sequence[np.ndarray], markers: np.ndarray, spec: PathfinderSpec
) -> bool:
    """Whether the two markers lie in one 8-connected blob of lit pixels of the image."""
    image = render(Scene(paths=tuple(paths), markers=markers, label=0), spec)
    blobs, _ = ndimage.label(image > _LIT, structure=_EIGHT)
    a, b = (blobs[tuple(np.floor(m).astype(int))] for m in markers)
    return bool(a) and a == b


def sample_scene(spec: PathfinderSpec, seed: int, index: int, label: int) -> Scene:
    """Image ``index``'s geometry. The paths depend on (spec, seed, index) only; ``label``
    chooses between the two marker pairs, last."""
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label}")
    rng = _rng(seed, spec, (1, index))
    capacity = 64 * (2 * spec.contour_length + spec.num_distractors * spec.distractor_length)
    pts = _Points(capacity)
    for _ in range(spec.max_restarts):
        pts.n = 0
        targets = _targets(rng, spec, pts)
        if targets is None:
            continue
        paths = list(targets)
        for d in range(spec.num_distractors):
            path = _distractor(rng, spec, pts, owner=2 + d)
            if path is not None:
                paths.append(path)
        same, cross = _marker_pairs(targets)
        if not _joined_in_pixels(paths, np.stack(cross), spec):
            break
    else:
        raise RuntimeError(
            f"could not place two separate paths of {spec.contour_length} dashes in a "
            f"{spec.resolution}x{spec.resolution} image after {spec.max_restarts} attempts; "
            f"use a shorter contour_length, dash_length or gap_length"
        )
    markers = same if label == 1 else cross
    return Scene(paths=tuple(paths), markers=np.stack(markers), label=label)


def generate_scenes(
    size: int, seed: int, spec: PathfinderSpec, start: int = 0, stop: int | None = None
) -> list[Scene]:
    """Scenes ``start..stop`` of the ``size``-image dataset (labels from ``random_labels``)."""
    stop = size if stop is None else stop
    if not 0 <= start <= stop <= size:
        raise ValueError(f"need 0 <= start <= stop <= size, got {start}, {stop}, {size}")
    labels = random_labels(size, seed, spec)
    return [sample_scene(spec, seed, i, int(labels[i])) for i in range(start, stop)]


def _window(canvas: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice] | None:
    """The canvas cells whose centres may lie in the box [lo, hi] (canvas pixel units)."""
    y0, x0 = max(0, math.floor(lo[0])), max(0, math.floor(lo[1]))
    y1, x1 = min(canvas.shape[0], math.ceil(hi[0]) + 1), min(canvas.shape[1], math.ceil(hi[1]) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _stamp_dash(canvas: np.ndarray, p: np.ndarray, q: np.ndarray, radius: float) -> None:
    """canvas = max(canvas, 1 inside the flat-ended bar pq of half-width ``radius``)."""
    win = _window(canvas, np.minimum(p, q) - radius, np.maximum(p, q) + radius)
    if win is None:
        return
    yy = np.arange(win[0].start, win[0].stop)[:, None] + 0.5 - p[0]  # cell centres - p
    xx = np.arange(win[1].start, win[1].stop)[None, :] + 0.5 - p[1]
    d = q - p
    length = math.hypot(d[0], d[1])
    uy, ux = d / length
    along = yy * uy + xx * ux
    inside = (np.abs(yy * ux - xx * uy) <= radius) & (along >= 0) & (along <= length)
    np.maximum(canvas[win], inside, out=canvas[win])


def _stamp_disc(canvas: np.ndarray, c: np.ndarray, radius: float) -> None:
    """canvas = max(canvas, 1 inside the disc of ``radius`` around c)."""
    win = _window(canvas, c - radius, c + radius)
    if win is None:
        return
    yy = np.arange(win[0].start, win[0].stop)[:, None] + 0.5 - c[0]
    xx = np.arange(win[1].start, win[1].stop)[None, :] + 0.5 - c[1]
    np.maximum(canvas[win], yy**2 + xx**2 <= radius**2, out=canvas[win])


def render(scene: Scene, spec: PathfinderSpec) -> np.ndarray:
    """(R, R) uint8: flat-ended dashes and marker discs at ``antialias``× supersampling,
    downsampled with Pillow's Lanczos filter, negative lobes clipped, scaled so that the
    brightest pixel is 255."""
    a, res = spec.antialias, spec.resolution
    canvas = np.zeros((res * a, res * a), dtype=np.float32)  # (aR, aR) coverage 0 or 1
    for path in scene.paths:
        for p, q in path * a:
            _stamp_dash(canvas, p, q, spec.thickness * a / 2)
    for m in scene.markers * a:
        _stamp_disc(canvas, m, spec.marker_radius * a)
    small = Image.fromarray(canvas).resize((res, res), Image.Resampling.LANCZOS)
    image = np.clip(np.asarray(small), 0.0, None)  # (R, R)
    return np.rint(image * (255 / image.max())).astype(np.uint8)


def generate(
    size: int, seed: int, spec: PathfinderSpec, start: int = 0, stop: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``start..stop`` (default all) of the ``size``-image dataset -> (images uint8
    (n, R, R), labels int64 (n,)): ``generate_scenes`` drawn with ``render``. ``make_spec``
    gives the spec for a resolution and contour length."""
    return _images(generate_scenes(size, seed, spec, start, stop), spec)


def _images(scenes: Sequence[Scene], spec: PathfinderSpec) -> tuple[np.ndarray, np.ndarray]:
    res = spec.resolution
    images = np.zeros((len(scenes), res, res), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        images[i] = render(scene, spec)
    return images, np.array([s.label for s in scenes], dtype=np.int64)
