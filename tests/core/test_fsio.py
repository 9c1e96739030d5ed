"""skutag.fsio: atomic writes leave either the old file or the new one, with ordinary permissions."""

from __future__ import annotations

import os

import pytest

from skutag.fsio import atomic_path, atomic_write_json, sha256_file


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "card.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert target.read_text().strip().endswith("}") and '"a": 2' in target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["card.json"]


def test_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half-written")
        raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_files_get_the_umask_mode_not_0600(tmp_path):
    umask = os.umask(0o022)
    try:
        target = tmp_path / "out.bin"
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x")
        assert target.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)


def test_sha256(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_an_output_folder_that_cannot_be_written_is_refused_in_one_line(tmp_path):
    import pytest

    from skutag.errors import InputError
    from skutag.fsio import check_output_dir

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for out, words in (
        (a_file, "that is a file"),
        (a_file / "under", "is a file, so no folder"),
        ("-", "name a folder"),
    ):
        with pytest.raises(InputError, match=words) as refused:
            check_output_dir(out)
        assert refused.value.exit_code == 2 and "\n" not in str(refused.value)
    check_output_dir(tmp_path / "new" / "deeper")  # a folder that can be made: fine, and nothing is made
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".skutag-probe-*"))


def test_a_file_a_writer_recreated_gets_the_ordinary_mode(tmp_path):
    import os
    import stat

    from skutag.fsio import atomic_path

    umask = os.umask(0)
    os.umask(umask)
    with atomic_path(tmp_path / "best.safetensors") as tmp:
        tmp.unlink()  # as safetensors' save_file does: a new file, created 0600
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    assert stat.S_IMODE((tmp_path / "best.safetensors").stat().st_mode) == 0o666 & ~umask
