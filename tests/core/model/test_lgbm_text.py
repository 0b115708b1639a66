"""A LightGBM text model from a file is checked and re-built before LightGBM parses it (``lgbm_text``)."""

from __future__ import annotations

import re

import lightgbm as lgb
import numpy as np
import pytest

from seepview.core.model.lgbm_text import clean_model_text

F, K = 5, 3
ARABIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


def _model(min_data_in_leaf=5, special=False):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, F))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 1)
    if special:  # missing values (NaN splits with a default direction) and an infinite feature value
        missing = rng.random(300) < 0.3
        x[missing, 2] = np.nan
        y[missing] = 2  # only the missing values tell class 2 apart
        x[0, 3] = np.inf
    booster = lgb.train({"objective": "multiclass", "num_class": K, "num_leaves": 7,
                         "min_data_in_leaf": min_data_in_leaf, "verbose": -1}, lgb.Dataset(x, y), 12)
    return booster.model_to_string()


@pytest.fixture(scope="module")
def text():
    return _model()


# 200 of 300 rows: every tree a one-leaf stump, as the shipped typist writes for a class it has no blob of
@pytest.mark.parametrize("min_data_in_leaf, special", [(5, False), (200, False), (5, True)])
def test_the_rebuilt_model_predicts_exactly_what_lightgbm_predicts_from_the_original(min_data_in_leaf, special):
    text = _model(min_data_in_leaf, special)
    clean = clean_model_text(text, F, K)
    assert "tree_sizes" not in clean and "pandas_categorical" not in clean and "parameters" not in clean
    assert ("num_leaves=1\n" in text) == (min_data_in_leaf == 200)
    if special:
        assert ":inf]" in text and re.search(r"threshold=.*\binf\b", text)  # kept, not refused
        assert re.search(r"decision_type=.*\b(8|10)\b", text)  # NaN-type splits are covered
    x = np.random.default_rng(1).normal(size=(200, F)) * 3
    x[::7, 2] = np.nan  # missing values take the stored default direction
    original = lgb.Booster(model_str=text).predict(x)
    assert np.array_equal(lgb.Booster(model_str=clean).predict(x), original)


def _first_tree_line(text, key, edit):
    """``text`` with the first multi-leaf tree's ``key=`` line changed by ``edit(values) -> values``."""
    for block in re.finditer(r"Tree=\d+\nnum_leaves=(\d+)\n(.*?)\n\n", text, re.S):
        if int(block.group(1)) > 2:
            line = re.search(rf"^{key}=(.*)$", block.group(0), re.M)
            start = block.start() + line.start(1)
            return text[:start] + " ".join(edit(line.group(1).split())) + text[block.start() + line.end(1):]
    raise AssertionError("no tree with 3 or more leaves")


@pytest.mark.parametrize(
    "edit, message",
    [
        # one extra value: LightGBM's threaded parser aborts the whole process on this
        (lambda t: _first_tree_line(t, "leaf_value", lambda v: v + ["1.0"]), "values for leaf_value"),
        # a child pointing back up: LightGBM loads it and then loops for ever at predict time
        (lambda t: _first_tree_line(t, "left_child", lambda v: ["0"] + v[1:]), "back up"),
        (lambda t: _first_tree_line(t, "right_child", lambda v: v[:-1] + ["-99"]), "leaf it does not have"),
        (lambda t: _first_tree_line(t, "split_feature", lambda v: ["9"] + v[1:]), "feature the model does not have"),
        (lambda t: _first_tree_line(t, "decision_type", lambda v: ["1"] + v[1:]), "decision type"),
        (lambda t: _first_tree_line(t, "leaf_value", lambda v: ["1e999"] + v[1:]), "finite"),
        (lambda t: _first_tree_line(t, "threshold", lambda v: ["nan"] + v[1:]), "numbers for threshold"),
        (lambda t: _first_tree_line(t, "leaf_count", lambda v: ["1_0"] + v[1:]), "whole numbers"),
        # other scripts' digits: numpy reads "٣" as 3, LightGBM as 0 (every child would point at the root)
        (lambda t: _first_tree_line(t, "left_child", lambda v: [x.translate(ARABIC) for x in v]), "whole numbers"),
        (lambda t: _first_tree_line(t, "threshold", lambda v: [x.translate(ARABIC) for x in v]), "numbers for"),
        (lambda t: t.replace("num_leaves=7\n", "num_leaves=99999\n", 1), "leaves"),
        (lambda t: t.replace("num_cat=0", "num_cat=1", 1), "categorical"),
        (lambda t: t.replace("max_feature_idx=4", "max_feature_idx=40"), "max_feature_idx"),
        (lambda t: t.replace("objective=multiclass", "objective=lambdarank"), "objective"),
        (lambda t: t.replace("Tree=1\n", "Tree=7\n", 1), "out of order"),
        (lambda t: t.replace("end of trees", "end of forests"), "do not end"),
        (lambda t: t.split("Tree=0")[0], "no trees"),
        (lambda t: t.replace("Tree=0\n", "Tree=0\nnum_leaves=3\n", 1), "repeated"),
    ],
)
def test_a_crafted_model_is_refused_before_lightgbm_sees_it(text, edit, message):
    bad = edit(text)
    assert bad != text
    with pytest.raises(ValueError, match=message):
        clean_model_text(bad, F, K)


def test_a_trailing_pandas_section_never_reaches_json(text):
    """LightGBM's wrapper json-decodes the last line; the rebuilt text has none."""
    hostile = text.rstrip("\n").rsplit("\n", 1)[0] + "\npandas_categorical:" + "[" * 100_000 + "\n"
    with pytest.raises(RecursionError):  # what LightGBM's own loader does with it
        lgb.Booster(model_str=hostile)
    assert lgb.Booster(model_str=clean_model_text(hostile, F, K)).num_feature() == F
