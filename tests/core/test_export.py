"""Export round trips: a UTM 31N scene and a GCP-located scene with known label rectangles.

GeoJSON vertices are checked against an independent UTM inverse / the GCP relation, areas against
pixel counts (UTM grid) and the ellipsoidal quadrangle area (GCPs); GeoPackage CRS and masks'
geo tags and pixels are read back with pyogrio / rasterio.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from seepview.core.errors import ExportError, ProjectError
from seepview.core.export import ExportOptions, export_project
from tests.core import export_fixtures as fx

pyogrio = pytest.importorskip("pyogrio")
rasterio = pytest.importorskip("rasterio")
shapely = pytest.importorskip("shapely")

MODEL = dict(weights_key="test-v1-0123456789", model_version="test-v1")


def _features(path):
    return json.loads(path.read_text())["features"]


def _by_class(features, cls):
    return [f for f in features if f["properties"]["class_id"] == cls]


@pytest.fixture
def utm_project(tmp_path):
    return fx.make_project(tmp_path, fx.write_utm_scene(tmp_path / "scene.tif"))


@pytest.fixture
def gcp_project(tmp_path):
    return fx.make_project(tmp_path, fx.write_gcp_scene(tmp_path / "s1.tif"))


def test_utm_geojson_lands_at_the_right_lonlat_and_areas(utm_project, tmp_path):
    project, _entry = utm_project
    out = tmp_path / "regions.geojson"
    result = export_project(project, ExportOptions(vector=out, **MODEL))
    features = _features(out)
    assert result.regions == len(features) == 3
    x0, y0 = fx.UTM31_ORIGIN
    for cls, r0, r1, c0, c1 in fx.RECTS:
        (feature,) = _by_class(features, cls)
        c0 = max(c0, fx.NODATA_COLS)  # no-data columns are never a region
        ring = np.array(feature["geometry"]["coordinates"][0])
        corners = [fx.utm_to_lonlat(x0 + fx.PIXEL * c, y0 - fx.PIXEL * r) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1))]
        for lon, lat in corners:
            assert np.min(np.hypot(ring[:, 0] - lon, ring[:, 1] - lat)) < 1e-6  # ~0.1 m
        props = feature["properties"]
        assert props["pixels"] == fx.expected_pixels(cls)
        assert props["unit"] == "m" and props["model_version"] == "test-v1"
        assert props["review_status"] == "in_progress"
        assert props["area"] == pytest.approx(props["pixels"] * fx.PIXEL**2, rel=0.01)
        assert props["major_axis"] == pytest.approx(max(r1 - r0, c1 - c0) * fx.PIXEL, rel=0.01)
    (holed,) = _by_class(features, 3)
    assert len(holed["geometry"]["coordinates"]) == 2  # the hole is kept as an interior ring


def test_utm_geopackage_is_in_the_image_crs(utm_project, tmp_path):
    project, _ = utm_project
    out = tmp_path / "regions.gpkg"
    export_project(project, ExportOptions(vector=out, **MODEL))
    info = pyogrio.read_info(out, layer="regions")
    assert info["crs"] == "EPSG:32631" and info["features"] == 3
    assert {"area", "perimeter", "major_axis", "mean_confidence", "review_status"} <= set(info["fields"])
    _meta, _fids, geometry, fields = pyogrio.raw.read(out, layer="regions")
    geoms = shapely.from_wkb(geometry)
    names = list(info["fields"])
    classes = fields[names.index("class_id")]
    x0, y0 = fx.UTM31_ORIGIN
    for geom, cls in zip(geoms, classes):
        _c, r0, r1, c0, c1 = next(r for r in fx.RECTS if r[0] == cls)
        c0 = max(c0, fx.NODATA_COLS)
        assert geom.bounds == pytest.approx((x0 + 10 * c0, y0 - 10 * r1, x0 + 10 * c1, y0 - 10 * r0))
    assert np.isnan(fields[names.index("mean_confidence")].astype(float)).all()  # no prediction cached


def test_mask_keeps_geo_tags_pixels_colours_and_class_names(utm_project, tmp_path):
    project, entry = utm_project
    result = export_project(project, ExportOptions(masks=tmp_path / "masks", **MODEL))
    (path,) = result.files
    assert path == tmp_path / "masks" / f"{entry.id}.tif"
    with rasterio.open(path) as src, rasterio.open(project.image_path(entry)) as img:
        assert src.crs == img.crs and src.transform == img.transform
        assert src.nodata == 255 and src.compression.name == "deflate"
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.block_shapes[0] == (512, 512)
        assert np.array_equal(src.read(1), fx._valid_labels())
        assert src.colormap(1)[1][:3] == project.classes[1].rgba[:3]
        assert src.colormap(1)[0][:3] == (0, 0, 0)  # TIFF palettes have no alpha: 255 (no-data) is the clear one
        tags = src.tags()
        assert tags["CLASS_1"] == project.classes[1].name
        assert json.loads(tags["SEEPVIEW_CLASSES"]) == project.classes.names
    # QGIS loads <mask>.qml by itself: class names and colours, background and 255 transparent
    import xml.etree.ElementTree as ET

    entries = {int(e.get("value")): e for e in ET.parse(path.with_suffix(".qml")).iter("paletteEntry")}
    assert set(entries) == {*project.classes.ids, 255}
    assert entries[0].get("alpha") == "0" and entries[255].get("alpha") == "0"
    r, g, b, _ = project.classes[1].rgba
    assert entries[1].get("color") == f"#{r:02x}{g:02x}{b:02x}" and entries[1].get("label") == project.classes[1].name


def test_gcp_scene_round_trip(gcp_project, tmp_path):
    project, entry = gcp_project
    source = project.open_image(entry)
    assert len(source.geo.gcps) == 9 and source.geo.locatable
    lon, lat = source.geo.pixel_to_map(123.5, 45.5)  # the status bar's interpolation
    assert (lon, lat) == pytest.approx(fx.gcp_lonlat(123.5, 45.5), abs=1e-9)
    source.close()
    out = tmp_path / "regions.geojson"
    result = export_project(
        project, ExportOptions(vector=out, masks=tmp_path / "m", report=tmp_path / "r.csv", **MODEL)
    )
    features = _features(out)
    for cls, r0, r1, c0, c1 in fx.RECTS:
        (feature,) = _by_class(features, cls)
        c0 = max(c0, fx.NODATA_COLS)
        ring = np.array(feature["geometry"]["coordinates"][0])
        for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1)):
            lon, lat = fx.gcp_lonlat(c, r)
            assert np.min(np.hypot(ring[:, 0] - lon, ring[:, 1] - lat)) < 1e-7
        if cls != 3:  # plain rectangles: the ellipsoid's quadrangle area, independently
            (lon0, lat0), (lon1, lat1) = fx.gcp_lonlat(c0, r0), fx.gcp_lonlat(c1, r1)
            expected = fx.quadrangle_area(lon0, lon1, lat0, lat1)
            assert feature["properties"]["area"] == pytest.approx(expected, rel=1e-3)
    mask = next(p for p in result.files if p.suffix == ".tif")
    with rasterio.open(mask) as src, rasterio.open(project.image_path(entry)) as img:
        gcps, crs = src.gcps
        assert crs == img.gcps[1] and len(gcps) == 9
        assert [(g.row, g.col, g.x, g.y) for g in gcps] == [(g.row, g.col, g.x, g.y) for g in img.gcps[0]]
        assert np.array_equal(src.read(1), fx._valid_labels())


def test_csv_report_rows_and_valid_area(utm_project, tmp_path):
    import csv

    project, entry = utm_project
    out = tmp_path / "report.csv"
    export_project(project, ExportOptions(report=out, **MODEL))
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(project.classes)
    valid = fx.SHAPE[0] * (fx.SHAPE[1] - fx.NODATA_COLS)
    for row in rows:
        cls = int(row["class_id"])
        assert row["image_id"] == entry.id
        assert int(row["pixels"]) == fx.expected_pixels(cls)
        assert float(row["percent_of_valid"]) == pytest.approx(100 * fx.expected_pixels(cls) / valid, abs=1e-4)
        if cls in (1, 2, 3):
            assert int(row["regions"]) == 1
            assert float(row["area_m2"]) == pytest.approx(fx.expected_pixels(cls) * 100, rel=0.01)
    coverage = 100 * sum(fx.expected_pixels(c) for c in (1, 2, 3)) / valid
    assert coverage > 5 and rows[0]["severity"] == "≥ 5 %"


def test_html_report_is_self_contained_with_bands_from_settings(utm_project, tmp_path):
    project, entry = utm_project
    project.settings["export"] = {"severity_bands": [20, 50]}
    project.save()
    out = tmp_path / "report.html"
    export_project(project, ExportOptions(report=out, **MODEL))
    text = out.read_text()
    assert "data:image/png;base64," in text and "<img" in text
    assert "src='http" not in text and "<link" not in text  # nothing fetched from elsewhere
    assert "test-v1" in text and entry.id in text
    assert "&lt; 20 %" in text  # coverage ~11 % is in the lowest band
    assert "seep 3" in text


def test_predictions_source_and_mean_confidence(utm_project, tmp_path):
    project, entry = utm_project
    labels = fx.labels()
    confidence = np.full(fx.SHAPE, 51, np.uint8)
    confidence[100:200, 200:300] = 204  # class 3's region
    project.save_prediction(entry, MODEL["weights_key"], labels, confidence)
    out = tmp_path / "pred.gpkg"
    export_project(project, ExportOptions(vector=out, source="predictions", **MODEL))
    _m, _f, _g, fields = pyogrio.raw.read(out)
    names = list(pyogrio.read_info(out)["fields"])
    conf = dict(zip(fields[names.index("class_id")], fields[names.index("mean_confidence")]))
    assert conf[3] == pytest.approx(0.8) and conf[1] == pytest.approx(0.2)


def test_selection_errors_and_skips(utm_project, tmp_path):
    project, entry = utm_project
    other = project.add_image(fx.write_utm_scene(tmp_path / "other.tif"))  # no labels
    result = export_project(project, ExportOptions(report=tmp_path / "r.csv", **MODEL))
    assert result.images == [entry.id] and result.skipped == [(other.id, "no labels saved")]
    with pytest.raises(ExportError, match="none is reviewed"):
        export_project(project, ExportOptions(report=tmp_path / "r.csv", reviewed_only=True, **MODEL))
    with pytest.raises(ExportError, match="predictions|cached prediction"):
        export_project(project, ExportOptions(report=tmp_path / "r.csv", source="predictions", **MODEL))
    with pytest.raises(ExportError, match="nothing to export"):
        export_project(project, ExportOptions(**MODEL))
    with pytest.raises(ExportError, match=r"\.gpkg or \.geojson"):
        export_project(project, ExportOptions(vector=tmp_path / "x.shp", **MODEL))
    with pytest.raises(ExportError, match="folder does not exist"):
        export_project(project, ExportOptions(report=tmp_path / "no" / "r.csv", **MODEL))
    with pytest.raises(ProjectError, match="severity bands"):
        export_project(project, ExportOptions(report=tmp_path / "r.csv", severity_bands=(5, 1), **MODEL))
    with pytest.raises(ProjectError, match="no image with id"):
        export_project(project, ExportOptions(report=tmp_path / "r.csv", images=["nope"], **MODEL))


def test_cancel_leaves_no_vector_file(utm_project, tmp_path):
    from seepview.core.errors import Cancelled

    project, _ = utm_project
    out = tmp_path / "regions.gpkg"
    with pytest.raises(Cancelled):
        export_project(project, ExportOptions(vector=out, **MODEL), cancel=lambda: True)
    assert not out.exists() and not list(tmp_path.glob(".regions.gpkg*"))


def test_mixed_crs_geopackage_layers_and_plain_photo(tmp_path):
    """A photo (no geo) and a UTM scene: GeoPackage gets a layer per CRS; GeoJSON refuses the mix."""
    from PIL import Image

    project, _ = fx.make_project(tmp_path, fx.write_utm_scene(tmp_path / "scene.tif"))
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((60, 80, 3), 128, np.uint8)).save(photo)
    entry = project.add_image(photo)
    mask = np.zeros((60, 80), np.uint8)
    mask[10:20, 10:30] = 1
    project.save_labels(entry, mask)
    out = tmp_path / "all.gpkg"
    report = tmp_path / "all.html"
    result = export_project(project, ExportOptions(vector=out, masks=tmp_path / "m", report=report, **MODEL))
    assert report.read_text().count("data:image/png;base64,") == 2  # the photo's thumbnail too
    layers = {name for name, _kind in pyogrio.list_layers(out)}
    assert layers == {"regions_epsg_32631", "regions_pixels"}
    assert pyogrio.read_info(out, layer="regions_pixels")["crs"] is None
    _m, _f, geometry, fields = pyogrio.raw.read(out, layer="regions_pixels")
    assert shapely.from_wkb(geometry[0]).bounds == (10, 10, 30, 20)  # x = column, y = row
    png = tmp_path / "m" / f"{entry.id}.png"
    assert png in result.files
    with Image.open(png) as img:
        assert img.mode == "P" and np.array_equal(np.array(img), mask)
    with pytest.raises(ExportError, match="not georeferenced"), warnings.catch_warnings():
        export_project(project, ExportOptions(vector=tmp_path / "all.geojson", **MODEL))


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_no_regions_still_writes_a_readable_vector_file(tmp_path, suffix):
    project, entry = fx.make_project(tmp_path, fx.write_utm_scene(tmp_path / "scene.tif"))
    project.save_labels(entry, np.zeros(fx.SHAPE, np.uint8))
    out = tmp_path / f"none{suffix}"
    result = export_project(project, ExportOptions(vector=out, **MODEL))
    assert result.regions == 0 and out.is_file()
    info = pyogrio.read_info(out)
    assert info["features"] == 0 and info["crs"] == ("EPSG:32631" if suffix == ".gpkg" else "EPSG:4326")
