"""Check a LightGBM text model from a file before LightGBM parses it, and hand LightGBM a clean copy.

LightGBM trusts its model text: a tree whose child index points back up loops for ever at predict time,
one extra value in a line aborts the whole process from a parser thread (``tree_sizes``), and a trailing
``pandas_categorical`` line goes through ``json.loads``. A model file is user input, so the text is
re-built here from what was checked: a fixed header, and per tree only numeric arrays of the lengths
the tree's size implies, in ASCII digits, with children that form one tree (every child numbered after
its parent, so no loops; every node and leaf reached once), numeric splits on existing features, and
finite values (a threshold may be ±inf, as LightGBM writes for a feature that held inf). Only what
prediction needs is kept (no ``tree_sizes``, importances, parameters or pandas section).
"""

from __future__ import annotations

import re
import reprlib

import numpy as np

#: Leaves per tree accepted (the typer uses 15; LightGBM's own limit is 131072).
MAX_LEAVES = 4096
# ASCII digits only: Python's \d also matches other scripts' digits, which numpy reads as numbers and
# LightGBM's parser does not (it stops at the first such byte and reads 0)
_INT = re.compile(r"-?[0-9]{1,10}(?: -?[0-9]{1,10})*")
_NUM = r"-?[0-9]{1,400}(?:\.[0-9]{1,400})?(?:[eE][-+]?[0-9]{1,3})?"
_FLOAT = re.compile(rf"{_NUM}(?: {_NUM})*")
# a split threshold may be ±inf (a feature that held infinite values); a comparison with it is harmless
_THRESHOLD = re.compile(rf"(?:{_NUM}|-?inf)(?: (?:{_NUM}|-?inf))*")
# a feature's training range; LightGBM writes inf for a feature that held infinite values (ranges are not
# used to predict)
_RANGE = rf"(?:none|\[(?:{_NUM}|-?inf):(?:{_NUM}|-?inf)\])"
_INFO = re.compile(rf"{_RANGE}(?: {_RANGE})*")
_NAME = re.compile(r"[A-Za-z0-9_]{1,64}(?: [A-Za-z0-9_]{1,64})*")
# decision_type bits: 1 categorical (refused), 2 default-left, 4|8 missing type (0 none, 4 zero, 8 NaN)
_DECISIONS = {0, 2, 4, 6, 8, 10}
#: Per tree, the arrays with num_leaves - 1 entries (internal nodes) and with num_leaves entries.
_NODE_INT = ("split_feature", "decision_type", "left_child", "right_child", "internal_count")
_NODE_FLOAT = ("split_gain", "threshold", "internal_value", "internal_weight")
_LEAF_INT = ("leaf_count",)
_LEAF_FLOAT = ("leaf_value", "leaf_weight")
_ORDER = ("split_feature", "split_gain", "threshold", "decision_type", "left_child", "right_child", "leaf_value",
          "leaf_weight", "leaf_count", "internal_value", "internal_weight", "internal_count")


def clean_model_text(text: str, num_features: int, num_classes: int) -> str:
    """The model re-built from its checked parts; raises ValueError saying what is wrong."""
    head, sep, rest = text.partition("\nTree=")
    if not sep:
        raise ValueError("it holds no trees")
    body, sep, _tail = ("Tree=" + rest).partition("\nend of trees")
    if not sep:
        raise ValueError("its trees do not end")
    header = _key_values(head.splitlines()[1:], "header")
    expect = {"version": "v4", "num_class": str(num_classes), "num_tree_per_iteration": str(num_classes),
              "label_index": "0", "max_feature_idx": str(num_features - 1),
              "objective": f"multiclass num_class:{num_classes}"}
    for key, value in expect.items():
        if header.get(key) != value:
            raise ValueError(f"its header says {key}={reprlib.repr(header.get(key))}, expected {value}")
    names = header.get("feature_names", "")
    if not _NAME.fullmatch(names) or len(names.split()) != num_features:
        raise ValueError(f"it does not name {num_features} features")
    infos = header.get("feature_infos", "")
    if not _INFO.fullmatch(infos) or len(infos.split()) != num_features:
        raise ValueError(f"it does not give the ranges of {num_features} numeric features")
    blocks = [b for b in re.split(r"\n\s*\n", body) if b.strip()]
    if not blocks or len(blocks) % num_classes:
        raise ValueError(f"it holds {len(blocks)} trees, not a whole number of rounds of {num_classes}")
    out = ["tree"] + [f"{k}={v}" for k, v in expect.items()] + [f"feature_names={names}", f"feature_infos={infos}", ""]
    for i, block in enumerate(blocks):
        out.append(_tree(block, i, num_features))
    out.append("end of trees\n")
    return "\n".join(out)


def _key_values(lines, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        if not line.strip():
            continue
        key, eq, value = line.partition("=")
        if not eq or key in out:
            raise ValueError(f"its {where} has a malformed or repeated line {reprlib.repr(line)}")
        out[key] = value
    return out


def _tree(block: str, index: int, num_features: int) -> str:
    lines = block.strip().splitlines()
    if lines[0] != f"Tree={index}":
        raise ValueError(f"tree {index} is out of order")
    kv = _key_values(lines[1:], f"tree {index}")
    where = f"tree {index}"
    leaves = kv.get("num_leaves", "")
    if not re.fullmatch(r"[0-9]{1,5}", leaves) or not 1 <= int(leaves) <= MAX_LEAVES:
        raise ValueError(f"{where} has {reprlib.repr(leaves)} leaves")
    n = int(leaves)
    if kv.get("num_cat") != "0" or kv.get("is_linear", "0") != "0":
        raise ValueError(f"{where} uses categorical or linear splits, which the typer never fits")
    _floats(kv, "shrinkage", 1, where)
    lines_out = [f"Tree={index}", f"num_leaves={n}", "num_cat=0"]
    if n == 1:  # a stump: one leaf value, no nodes
        _floats(kv, "leaf_value", 1, where)
        lines_out.append(f"leaf_value={kv['leaf_value']}")
    else:
        arrays = {name: parse(kv, name, count, where)
                  for names, count, parse in ((_NODE_INT, n - 1, _ints), (_NODE_FLOAT, n - 1, _floats),
                                              (_LEAF_INT, n, _ints), (_LEAF_FLOAT, n, _floats))
                  for name in names}
        _check_structure(arrays, n, num_features, where)
        lines_out += [f"{name}={kv[name]}" for name in _ORDER]
    lines_out += ["is_linear=0", f"shrinkage={kv['shrinkage']}", "", ""]
    return "\n".join(lines_out)


def _check_structure(a: dict[str, np.ndarray], n: int, num_features: int, where: str) -> None:
    feature = a["split_feature"]
    if (feature < 0).any() or (feature >= num_features).any():
        raise ValueError(f"{where} splits on a feature the model does not have")
    if not set(a["decision_type"].tolist()) <= _DECISIONS:
        raise ValueError(f"{where} has a decision type the typer never fits")
    nodes = np.zeros(n - 1, np.int64)
    leaves = np.zeros(n, np.int64)
    for i, (left, right) in enumerate(zip(a["left_child"].tolist(), a["right_child"].tolist())):
        for child in (left, right):
            if child >= 0:
                if not i < child < n - 1:  # numbered after its parent: no loops
                    raise ValueError(f"{where} has a node pointing outside the tree or back up it")
                nodes[child] += 1
            else:
                if ~child >= n:
                    raise ValueError(f"{where} points to a leaf it does not have")
                leaves[~child] += 1
    if (nodes[1:] != 1).any() or nodes[0] != 0 or (leaves != 1).any():
        raise ValueError(f"{where} does not reach every node and leaf exactly once")


def _ints(kv: dict, name: str, count: int, where: str) -> np.ndarray:
    value = kv.get(name)
    if value is None or not _INT.fullmatch(value):
        raise ValueError(f"{where} lacks whole numbers for {name}")
    out = np.array(value.split(), np.int64)
    if len(out) != count:
        raise ValueError(f"{where} has {len(out)} values for {name}, expected {count}")
    return out


def _floats(kv: dict, name: str, count: int, where: str) -> np.ndarray:
    value = kv.get(name)
    threshold = name == "threshold"
    if value is None or not (_THRESHOLD if threshold else _FLOAT).fullmatch(value):
        raise ValueError(f"{where} lacks numbers for {name}")
    out = np.array(value.split(), np.float64)
    if len(out) != count or not (threshold or np.isfinite(out).all()):
        raise ValueError(f"{where} has {len(out)} values for {name} (expected {count} finite ones)")
    return out
