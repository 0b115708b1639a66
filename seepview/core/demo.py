"""A synthetic SAR-like demo project, so a newcomer (and every test) has data without downloads.

Each tile mimics what matters in real seep imagery: uint16 amplitude, multiplicative gamma speckle
(``looks`` looks), faint wind streaks (a low-frequency field stretched along the wind), an incidence-angle
brightness ramp, dark elongated slicks and, on every third tile, a no-data wedge of exact 0.

Slick class = seep 1..7 by damping: class k multiplies backscatter by ``DAMPING[k-1]`` (seep 1
faint, seep 7 darkest), so a model can learn to tell classes apart from relative darkness.

The true masks go to ``truth/<id>.tif`` (recorded as ``settings["truth_dir"]``) and ``labels/``
stays empty: the demo starts like a real review session, with predictions to check, and the truth
is there to score models and to simulate "corrections" in tests and benchmarks. Tiles are named
``<scene>.<tile>`` with two tiles per scene, so group-wise splits have something to group.
Deterministic by seed; tile i depends only on (seed, i, size).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage
from skimage import draw

from seepview.core.atomic import atomic_path, unwritable
from seepview.core.classes import ClassTable
from seepview.core.errors import ProjectError
from seepview.core.imageio import write_mask
from seepview.core.project import Project

DEMO_PRESET = "sar-seep"
TRUTH_DIR = "truth"
DAMPING = (0.70, 0.60, 0.50, 0.41, 0.32, 0.24, 0.16)  # intensity factor inside a slick of class 1..7
LOOKS = 4
#: Log-std of the wind-streak field. 0.1 (calm sea, when seeps show best): the CGG tiles' false detections
#: are specks (median 6 px, 13 blobs per tile) and at 0.35 the demo's streaks made ~250 large false blobs per
#: 512² tile that the shipped model outlined and its typer then had to reject, slicks with them (issue 11).
WIND = 0.1
NODATA_EVERY = 3  # tile i has a no-data wedge when i % NODATA_EVERY == 1


def demo_name(index: int) -> str:
    """``<scene>.<tile>``: two tiles per synthetic scene."""
    return f"{900001 + index // 2:06d}.{index % 2 + 1:06d}"


def _wind_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """Zero-mean, unit-std streaks: white noise low-passed much harder along the wind than across."""
    theta = rng.uniform(0, np.pi)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    along = fx * np.cos(theta) + fy * np.sin(theta)
    across = -fx * np.sin(theta) + fy * np.cos(theta)
    response = np.exp(-((along / 0.008) ** 2) - (across / 0.05) ** 2)
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * response, s=(size, size))
    field -= field.mean()
    return field / (field.std() + 1e-12)


def _slick_shape(rng: np.random.Generator, size: int) -> np.ndarray:
    """A soft (0..1) slick footprint: a wandering streak of discs or a rotated ellipse, smoothed."""
    canvas = np.zeros((size, size), dtype=np.float32)
    cy, cx = rng.uniform(0.15, 0.85, 2) * size
    if rng.random() < 0.7:  # seeps drift into long, wandering streaks
        heading = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.25, 0.6) * size
        width = rng.uniform(0.008, 0.025) * size
        step = max(1.0, width / 2)
        for _ in range(int(length / step)):
            heading += rng.normal(0, 0.12)
            width = float(np.clip(width * rng.uniform(0.93, 1.08), 0.005 * size, 0.04 * size))
            cy += step * np.sin(heading)
            cx += step * np.cos(heading)
            rr, cc = draw.disk((cy, cx), max(width, 1.5), shape=canvas.shape)
            canvas[rr, cc] = 1.0
    else:
        major, minor = rng.uniform(0.06, 0.16) * size, rng.uniform(0.015, 0.04) * size
        rr, cc = draw.ellipse(cy, cx, major, minor, shape=canvas.shape, rotation=rng.uniform(0, np.pi))
        canvas[rr, cc] = 1.0
    return ndimage.gaussian_filter(canvas, sigma=max(1.0, size / 256))


def synth_tile(rng: np.random.Generator, size: int, nodata: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One (uint16 amplitude image, uint8 true mask) pair."""
    ramp = np.linspace(1.25, 0.8, size)[None, :]  # far range is darker
    intensity = ramp * np.exp(WIND * _wind_field(rng, size))
    truth = np.zeros((size, size), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        k = int(rng.integers(1, 8))
        soft = _slick_shape(rng, size)
        inside = soft > 0.5
        if inside.sum() < 20:
            continue
        damping = DAMPING[k - 1] * rng.uniform(0.95, 1.05)
        intensity *= 1.0 - (1.0 - damping) * np.clip(soft * 2.0, 0.0, 1.0)
        truth[inside] = k
    intensity *= rng.gamma(LOOKS, 1.0 / LOOKS, size=(size, size))
    amplitude = np.sqrt(intensity)
    amplitude *= rng.uniform(24000, 40000) / np.median(amplitude)
    image = np.clip(np.rint(amplitude), 1, 65535).astype(np.uint16)  # 0 is reserved for no-data
    if nodata:  # a scene-edge wedge from one corner
        angle = rng.uniform(0.2, 1.3) + rng.integers(0, 4) * np.pi / 2
        yy, xx = np.mgrid[0:size, 0:size] - size / 2
        wedge = (xx * np.cos(angle) + yy * np.sin(angle)) > size * rng.uniform(0.2, 0.45)
        image[wedge] = 0
        truth[wedge] = 0
    return image, truth


def make_demo_project(dest: str | os.PathLike, n_images: int = 6, size: int = 512, seed: int = 0) -> Project:
    """Create the demo project in ``dest`` (images inside it, truth in ``truth/``, labels empty).

    Built in a hidden sibling folder and renamed into place, so an interrupted first run never leaves
    a half-made demo that later launches would open.
    """
    if n_images < 1 or size < 32:
        raise ValueError("the demo needs at least 1 image of at least 32x32 pixels")
    dest = Path(dest).absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ProjectError(dest, "the demo needs a new or empty folder")
    build = dest.parent / f".{dest.name}.building-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    why = unwritable(dest)
    if why is not None:  # name the folder the user gave, never the hidden build folder
        raise ProjectError(dest, f"cannot create the demo folder: {why}")
    try:
        try:
            project = Project.create(build, ClassTable.preset(DEMO_PRESET), name="seepview demo")
        except ProjectError as exc:
            raise ProjectError(dest, exc.reason) from None
        paths = []
        for i in range(n_images):
            image, truth = synth_tile(
                np.random.default_rng([seed, i, size]), size, nodata=i % NODATA_EVERY == 1
            )
            name = demo_name(i)
            image_path = project.root / "images" / f"{name}.tif"
            with atomic_path(image_path) as tmp:
                tifffile.imwrite(tmp, image, photometric="minisblack")
            write_mask(project.root / TRUTH_DIR / f"{name}.tif", truth)
            paths.append(image_path)
        project.add_images(paths)
        project.settings["truth_dir"] = TRUTH_DIR
        project.settings["demo"] = {"seed": seed, "size": size, "n_images": n_images, "looks": LOOKS}
        project.save()
        if dest.exists():
            dest.rmdir()
        os.replace(build, dest)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return Project.open(dest)


def truth_path(project: Project, entry) -> Path:
    """Where the demo's true mask of ``entry`` lives (``settings["truth_dir"]``)."""
    folder = project.settings.get("truth_dir", TRUTH_DIR)
    return project.root / folder / f"{project.entry(entry).id}.tif"
