"""Demo P2 data: generated land-cover scenes in the course's layout, no download needed.

Each scene is a warped Voronoi partition (smooth, irregular regions) whose cells take one of the
seven classes, drawn with the class's own colour and texture: striped fields, noisy dark
forest, smooth dark water, grey blocks of buildings. Colours are jittered per region and per
scene and the JPEG is lossy, so a model needs texture and context as well as colour: learnable,
not trivial.
"""
from pathlib import Path

import numpy as np
from PIL import Image

from hw1.data.demo import claim_demo_folder, finish_demo_folder
from hw1.data.masks import write_mask
from hw1.data.seg import MASK_SUFFIX, SAT_SUFFIX

MARKER = ".seg_demo.json"

# Share of regions per class (urban, agriculture, rangeland, forest, water, barren, unknown):
# agriculture leads as in the course data, but less lopsided so every class is learnable in a
# short run, and a few unknown (no-data) regions exercise the ignore index.
_CLASS_P = np.array([0.16, 0.28, 0.14, 0.14, 0.11, 0.14, 0.03])
# Mean RGB and per-pixel noise of each class.
_BASE = np.array([
    [125, 125, 130],  # urban: grey
    [165, 175, 85],   # agriculture: yellowish green
    [150, 145, 100],  # rangeland: light green-brown
    [45, 85, 45],     # forest: dark green
    [30, 50, 95],     # water: dark blue
    [190, 165, 125],  # barren: tan
    [8, 8, 8],        # unknown: no-data black
], dtype=np.float32)
_NOISE = np.array([10, 7, 12, 20, 3, 9, 2], dtype=np.float32)


def _smooth_noise(rng, size, cells):
    """(size, size) float32 field of unit scale varying over about ``size / cells`` pixels."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))


def _scene(rng, size):
    """One (H, W, 3) uint8 satellite image and its (H, W) uint8 class map."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    n_regions = int(rng.integers(5, 13))
    centres = rng.uniform(0, size, size=(n_regions, 2)).astype(np.float32)
    region_class = rng.choice(len(_CLASS_P), size=n_regions, p=_CLASS_P)
    # Warping the coordinates before the nearest-centre test bends the straight Voronoi edges
    # into field- and shore-like boundaries.
    warp = 0.08 * size
    wy = yy + warp * _smooth_noise(rng, size, 4)
    wx = xx + warp * _smooth_noise(rng, size, 4)
    dist = (wy[None] - centres[:, :1, None]) ** 2 + (wx[None] - centres[:, 1:, None]) ** 2
    region = dist.argmin(0)
    cls = region_class[region].astype(np.uint8)

    colour = _BASE[region_class] + rng.normal(0, 12, size=(n_regions, 3)).astype(np.float32)
    img = colour[region] + _NOISE[cls][..., None] * rng.standard_normal((size, size, 3), dtype=np.float32)

    # Agriculture: parallel furrows, a random direction and spacing per field.
    theta = rng.uniform(0, np.pi, n_regions).astype(np.float32)
    period = rng.uniform(4, 9, n_regions).astype(np.float32)
    phase = (xx * np.cos(theta)[region] + yy * np.sin(theta)[region]) * (2 * np.pi / period[region])
    texture = np.where(cls == 1, 22 * np.sin(phase), 0)
    # Urban: blocks of buildings of different greys with darker streets between them.
    block = max(size // 16, 3)
    blocks = rng.normal(0, 25, size=(size // block + 1,) * 2).astype(np.float32)
    street = ((yy % block) < 1.5) | ((xx % block) < 1.5)
    urban = np.where(street, -40, blocks[(yy // block).astype(int), (xx // block).astype(int)])
    texture = np.where(cls == 0, urban, texture)
    # Forest and rangeland: canopy clumps and patchy grass, on a finer scale than the regions.
    clumps = _smooth_noise(rng, size, max(size // 6, 2))
    texture = texture + np.where(cls == 3, 18 * clumps, np.where(cls == 2, 10 * clumps, 0))
    img = img + texture[..., None]

    # Scene-wide light and haze, so absolute colour alone is not a reliable cue.
    img = img * rng.uniform(0.85, 1.15) + 15 * _smooth_noise(rng, size, 2)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8), cls


def _expected_names(n):
    return {f"{i:04d}{suffix}" for i in range(n) for suffix in (SAT_SUFFIX, MASK_SUFFIX)}


def make_seg_demo(root, layout, *, n_train=64, n_val=16, size=128, seed=0):
    """Write the split folders of P2's ``layout`` (:class:`hw1.tasks.base.Layout`: ``root/train`` and
    ``root/validation``) of ``{id:04d}_sat.jpg`` + ``_mask.png``; return ``root``.

    Deterministic for a seed (scene ``i`` of a split does not depend on the counts). A folder
    already complete for the same arguments is left as is; the marker file ``.seg_demo.json``
    records the arguments and is marked complete only after the last file is written. A folder
    holding anything but the demo's own data is refused (:func:`hw1.data.demo.claim_demo_folder`).
    """
    root = Path(root)
    params = {"n_train": n_train, "n_val": n_val, "size": size, "seed": seed}
    counts = dict(zip((layout.train, layout.val), (n_train, n_val)))
    if claim_demo_folder(root, MARKER, params) and all(
            (root / split / name).is_file() for split, n in counts.items() for name in _expected_names(n)):
        return root

    for split, n in counts.items():
        folder = root / split
        if not folder.is_dir():
            continue
        expected = _expected_names(n)
        for p in folder.iterdir():  # the demo's own pairs of other counts
            if p.name.endswith((SAT_SUFFIX, MASK_SUFFIX)) and p.name not in expected:
                p.unlink()

    for split_no, (split, n) in enumerate(counts.items()):
        folder = root / split
        folder.mkdir(exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng([seed, split_no, i])
            image, cls = _scene(rng, size)
            Image.fromarray(image).save(folder / f"{i:04d}{SAT_SUFFIX}", format="JPEG", quality=90)
            write_mask(cls, folder / f"{i:04d}{MASK_SUFFIX}")
    finish_demo_folder(root, MARKER, params)
    return root
