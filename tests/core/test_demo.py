import numpy as np

from seepview.core.classes import ClassTable
from seepview.core.demo import DAMPING, make_demo_project, synth_tile, truth_path
from seepview.core.imageio import open_image, read_mask
from seepview.core.project import Project


def test_demo_project_layout(tmp_path):
    project = make_demo_project(tmp_path / "demo", n_images=4, size=128, seed=3)
    assert project.classes == ClassTable.preset("sar-seep")
    assert len(project) == 4
    assert len({e.group for e in project.entries}) == 2  # two tiles per scene
    reopened = Project.open(project.root)
    for entry in reopened.entries:
        assert not entry.path.is_absolute()  # images live inside the demo project
        assert reopened.load_labels(entry) is None  # the user reviews predictions from scratch
        assert entry.status == "unreviewed"
        with reopened.open_image(entry) as source:
            assert source.shape == (128, 128) and source.dtype == np.uint16
        truth = read_mask(truth_path(reopened, entry), classes=reopened.classes, shape=(128, 128))
        assert truth.dtype == np.uint8
    assert reopened.settings["truth_dir"] == "truth"


def test_demo_is_deterministic_and_seed_dependent(tmp_path):
    a = make_demo_project(tmp_path / "a", n_images=2, size=64, seed=1)
    b = make_demo_project(tmp_path / "b", n_images=2, size=64, seed=1)
    c = make_demo_project(tmp_path / "c", n_images=2, size=64, seed=2)
    read = lambda p, e: open_image(p.image_path(e)).read_all()  # noqa: E731
    for ea, eb, ec in zip(a.entries, b.entries, c.entries):
        assert np.array_equal(read(a, ea), read(b, eb))
        assert np.array_equal(read_mask(truth_path(a, ea)), read_mask(truth_path(b, eb)))
        assert not np.array_equal(read(a, ea), read(c, ec))


def test_tiles_look_like_sar_with_dark_slicks():
    darker_by_class = {}
    seen_nodata = False
    for i in range(12):
        image, truth = synth_tile(np.random.default_rng([0, i]), 192, nodata=i % 3 == 1)
        assert image.dtype == np.uint16 and truth.dtype == np.uint8
        valid = image > 0
        seen_nodata |= not valid.all()
        assert not truth[~valid].any()  # no labels inside no-data
        sea = image[(truth == 0) & valid].astype(float)
        # Speckle: amplitude of L=4 looks has a coefficient of variation well above zero.
        assert sea.std() / sea.mean() > 0.2
        for k in np.unique(truth[truth > 0]):
            ratio = np.median(image[truth == k]) / np.median(sea)
            darker_by_class.setdefault(int(k), []).append(ratio)
            assert ratio < 0.95  # slicks are dark
    assert seen_nodata
    # Stronger damping (higher class) gives a darker slick on average: classes are learnable.
    means = {k: np.mean(v) for k, v in darker_by_class.items()}
    ks = sorted(means)
    assert len(ks) >= 4
    assert np.corrcoef(ks, [means[k] for k in ks])[0, 1] < -0.8
    assert tuple(sorted(DAMPING, reverse=True)) == DAMPING
