import numpy as np
import pytest

from clipes.errors import InputError, UserError
from clipes.store import camstore
from clipes.store.manifest import begin_run, end_run, identity_of, read_manifest


def test_roundtrip_and_no_pickle(tmp_path):
    path = camstore.cam_path(tmp_path, "2007_000032")
    cams = np.random.default_rng(0).random((2, 3, 4)).astype(np.float32)
    camstore.write_cam_file(path, [4, 2], cams, (40, 60))
    got = camstore.read_cam_file(path)
    assert got.keys.tolist() == [4, 2] and got.image_size == (40, 60)
    np.testing.assert_array_equal(got.cams, cams)
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["cams", "image_size", "keys"]
    assert camstore.done_ids(tmp_path) == {"2007_000032"}
    assert [p.name for p in tmp_path.iterdir()] == ["2007_000032.npz"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(handle, **arrays):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError):
        camstore.write_cam_file(tmp_path / "x.npz", [0], np.zeros((1, 2, 2)), (32, 32))
    assert list(tmp_path.iterdir()) == []


def test_bad_cam_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        camstore.read_cam_file(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read"):
        camstore.read_cam_file(tmp_path / "bad.npz")
    with pytest.raises(InputError, match="cannot be used as a file name"):
        camstore.cam_path(tmp_path, "../escape")


def test_manifest_identity_guard_and_failure_merge(tmp_path):
    ident = identity_of({"a": 1})
    begin_run(tmp_path, "cams", {"options": {}}, ident)
    end_run(tmp_path, {"done": 1}, succeeded={"x"}, failures={"y": "bad", "z": "worse"}, notes={}, file_count=1)
    with pytest.raises(UserError, match="made with other settings"):
        begin_run(tmp_path, "cams", {}, identity_of({"a": 2}))
    with pytest.raises(UserError, match="not 'refined'"):
        begin_run(tmp_path, "refined", {}, ident)
    begin_run(tmp_path, "cams", {}, ident)
    data = end_run(tmp_path, {"done": 1}, succeeded={"y"}, failures={}, notes={"x": "gray"}, file_count=2)
    assert data["failures"] == {"z": "worse"} and data["counts"] == {"files": 2, "failed": 1}
    assert len(read_manifest(tmp_path)["runs"]) == 2
    forced = begin_run(tmp_path, "cams", {}, identity_of({"a": 2}), force=True)
    assert forced["failures"] == {} and forced["runs"] == []
