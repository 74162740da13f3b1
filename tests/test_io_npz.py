"""deid.io.npz: the cached-.npz writer and reader the stranger bank, the directions and the aware maps share."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from deid.io.npz import NpzError, load_npz, save_npz


def test_round_trip_keeps_arrays_meta_and_layout(tmp_path):
    path = tmp_path / "sub" / "c.npz"
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    save_npz(path, {"a": a, "names": np.array(["x", "yé"])}, {"k": [1, 2], "s": "é"}, version=3)
    assert sorted(os.listdir(path.parent)) == ["c.npz"]          # no temporary left beside it
    with np.load(path, allow_pickle=False) as z:                  # the on-disk layout other readers rely on
        assert sorted(z.files) == ["a", "format", "meta", "names"]
        assert int(z["format"]) == 3 and z["meta"].dtype == np.uint8
        assert json.loads(z["meta"].tobytes().decode()) == {"k": [1, 2], "s": "é"}
    arrays, meta = load_npz(path, "test cache", 3)
    assert sorted(arrays) == ["a", "names"] and meta == {"k": [1, 2], "s": "é"}
    assert arrays["a"].dtype == np.float32 and np.array_equal(arrays["a"], a)
    assert arrays["names"].tolist() == ["x", "yé"]


def test_text_card_and_no_version(tmp_path):
    path = tmp_path / "m.npz"
    save_npz(path, {"w": np.ones(2)}, {"n": 5}, meta_key="report", meta_text=True)
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == ["report", "w"] and z["report"].dtype.kind == "U"
        assert json.loads(str(z["report"])) == {"n": 5}
    arrays, meta = load_npz(path, "maps", meta_key="report", required=["w", "report"])
    assert meta == {"n": 5} and list(arrays) == ["w"]
    assert load_npz(tmp_path / "m.npz", "maps")[1] == {}         # another meta_key: the card is just an array


def test_other_format_names_the_file_and_both_versions(tmp_path):
    path = tmp_path / "bank.npz"
    save_npz(path, {"x": np.zeros(1)}, version=2)
    with pytest.raises(NpzError, match=r"bank\.npz: stranger bank format 2, expected 1; remove it"):
        load_npz(path, "stranger bank", 1)
    save_npz(path, {"x": np.zeros(1)})
    with pytest.raises(NpzError, match=r"bank\.npz: no format in it, expected stranger bank \(\.npz, format 1\)"):
        load_npz(path, "stranger bank", 1)


def test_missing_key_truncated_file_and_pickles_are_errors(tmp_path):
    path = tmp_path / "d.npz"
    save_npz(path, {"ws": np.zeros((2, 3))}, {"a": 1}, version=1)
    with pytest.raises(NpzError, match=r"d\.npz: directions without crops, points"):
        load_npz(path, "directions", 1, required=["ws", "crops", "points"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])                      # a half file (a crash of another writer)
    with pytest.raises(NpzError, match=r"d\.npz: not a readable directions"):
        load_npz(path, "directions", 1)
    with open(path, "wb") as f:                                   # an object array: refused, never unpickled
        np.savez(f, format=np.array(1), obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(NpzError, match=r"d\.npz: not a readable directions.*pickle"):
        load_npz(path, "directions", 1)
    with open(path, "wb") as f:
        np.savez(f, format=np.array(1), meta=np.frombuffer(b"[1, 2]", dtype=np.uint8))
    with pytest.raises(NpzError, match=r"d\.npz: the card \(meta\) of the directions is not a JSON object"):
        load_npz(path, "directions", 1)
    assert issubclass(NpzError, ValueError)                       # the callers' rebuild-on-ValueError still holds
