"""t2i_core.files.atomic_write: saved files get the umask's permissions (mkstemp alone gives 0600), and a
full disk leaves the previous file and says so."""
import errno
import os
import stat

import pytest
from t2i_test_utils import make_test_model

from t2i_core import save_checkpoint
from t2i_core.files import atomic_write


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_checkpoints_get_the_umask_permissions(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "m.safetensors", make_test_model())
        text = atomic_write(tmp_path / "m.loss.csv", lambda tmp: tmp.write_text("step,loss\n"))
    finally:
        os.umask(previous)
    for p in (path, text):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, (p, oct(p.stat().st_mode))


def test_a_full_disk_keeps_the_previous_file_and_says_so(tmp_path):
    target = atomic_write(tmp_path / "m.safetensors", lambda tmp: tmp.write_bytes(b"good"))

    def full(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError, match="the disk is full: could not write .*m.safetensors.*previous file is intact"):
        atomic_write(target, full)
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left behind


def test_a_full_disk_under_the_safetensors_writer_is_named_too(tmp_path):
    # safetensors' Rust writer raises SafetensorError, not OSError, for ENOSPC (seen on a full tmpfs)
    from safetensors import SafetensorError
    target = atomic_write(tmp_path / "m.safetensors", lambda tmp: tmp.write_bytes(b"good"))

    def full(tmp):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(OSError, match="the disk is full") as error:
        atomic_write(target, full)
    assert error.value.errno == errno.ENOSPC and target.read_bytes() == b"good"
