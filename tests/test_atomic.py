"""core.atomic: the one atomic-write helper (modes, failures, leftovers)."""
import errno
import os
import stat

import pytest

from core import atomic


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        for i, payload in enumerate((b"bytes", "text", lambda p: open(p, "w").write("callback"))):
            path = atomic.atomic_write(tmp_path / f"f{i}.txt", payload)
            assert stat.S_IMODE(path.stat().st_mode) == mode, payload
    finally:
        os.umask(old)


def test_failure_leaves_nothing_and_names_path_and_errno(tmp_path, monkeypatch):
    target = tmp_path / "out" / "x.json"
    atomic.atomic_write(target, "old")

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full_disk)
    with pytest.raises(OSError) as info:
        atomic.atomic_write(target, "new")
    assert info.value.errno == errno.ENOSPC and str(target) in str(info.value)
    assert target.read_text() == "old"                       # the old file is untouched
    assert atomic.stale_temporaries(target.parent) == []     # and no temporary is left


def test_refuses_inputs_and_existing_files(tmp_path):
    src = tmp_path / "input.nii.gz"
    src.write_bytes(b"data")
    with pytest.raises(ValueError, match="input file"):
        atomic.atomic_write(src, b"x", protected=[src])
    with pytest.raises(FileExistsError):
        atomic.atomic_write(src, b"x", overwrite=False)
    assert src.read_bytes() == b"data"
