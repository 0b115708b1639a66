import json

import numpy as np
import pytest

from seepview.core.classes import IGNORE, ClassTable
from seepview.core.errors import ClassTableError, MaskError


def test_presets():
    sar = ClassTable.preset("sar-seep")
    assert sar.names == ["background"] + [f"seep {i}" for i in range(1, 8)]
    assert [c.key for c in sar][1:] == [str(i) for i in range(1, 8)]
    corrosion = ClassTable.preset("corrosion")
    assert corrosion.names == ["background", "corrosion"]
    # Foreground colours are distinct and opaque so they read over grey SAR.
    colours = {c.rgba for c in sar if c.id}
    assert len(colours) == 7 and all(c[3] == 255 for c in colours)


def test_unknown_preset_names_choices():
    with pytest.raises(ClassTableError, match="sar-seep"):
        ClassTable.preset("nope")


def test_edits_return_new_tables_and_round_trip():
    table = ClassTable.preset("sar-seep").rename(1, "natural seep").recolor(2, (1, 2, 3, 200)).add("ship wake")
    assert table[1].name == "natural seep" and table[2].rgba == (1, 2, 3, 200)
    assert table[8].name == "ship wake" and len(table) == 9
    assert ClassTable.from_dict(table.to_dict()) == table
    assert ClassTable.preset("sar-seep")[1].name == "seep 1"  # the preset itself is untouched


def test_bad_edits():
    table = ClassTable.preset("corrosion")
    with pytest.raises(ClassTableError):
        table.rename(1, "  ")
    with pytest.raises(ClassTableError):
        table.recolor(1, (0, 0, 300, 255))
    with pytest.raises(ClassTableError, match="unknown class id 5"):
        table[5]


def test_lut_transparent_background_and_ignore():
    table = ClassTable.preset("sar-seep")
    lut = table.lut(opacity=0.5, visible=[True, True, False] + [True] * 5)
    assert lut.shape == (256, 4) and lut.dtype == np.uint8
    assert lut[0, 3] == 0 and lut[IGNORE, 3] == 0
    assert lut[1, 3] == 128 and lut[2, 3] == 0


def test_validate_mask():
    table = ClassTable.preset("corrosion")
    table.validate_mask(np.array([[0, 1], [255, 1]], np.uint8))
    with pytest.raises(MaskError, match="200"):
        table.validate_mask(np.array([[0, 200]], np.uint8), "m.png")
    with pytest.raises(MaskError, match="single-channel"):
        table.validate_mask(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(MaskError, match="uint8"):
        table.validate_mask(np.zeros((2, 2), np.uint16))


def test_from_spec_file(tmp_path):
    names = tmp_path / "classes.json"
    names.write_text(json.dumps(["bg", "oil", "look-alike"]))
    assert ClassTable.from_spec(names).names == ["bg", "oil", "look-alike"]
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ClassTableError, match="broken.json"):
        ClassTable.from_spec(broken)
    gaps = tmp_path / "gaps.json"
    gaps.write_text(json.dumps({"classes": [{"id": 0, "name": "a"}, {"id": 2, "name": "b"}]}))
    with pytest.raises(ClassTableError, match="without gaps"):
        ClassTable.from_spec(gaps)


def test_class_tables_of_the_wrong_shape_say_what_a_class_table_is(tmp_path):
    import json

    from seepview.core.classes import ClassTable
    from seepview.core.errors import ClassTableError

    for data, said in (({}, '"classes" list'), ([1, 2], '"classes" list'), ({"classes": [{"id": 1}]}, "missing 'name'")):
        path = tmp_path / "t.json"
        path.write_text(json.dumps(data))
        with pytest.raises(ClassTableError, match=said) as info:
            ClassTable.from_spec(path)
        assert "KeyError" not in str(info.value) and "TypeError" not in str(info.value)
