"""End to end: Debian's kernel with a v2 grant table (``grant_table.version=2``).

Linux then switches the table with GNTTABOP_set_version, maps the status
frames from GNTTABOP_get_status_frames and writes 16-byte entries; the block
backend must resolve them (``GrantTable.lookup`` reads the v2 layout) for the
disk to work at all.
"""

from __future__ import annotations

import pytest

from conftest import run_hospes

pytestmark = [pytest.mark.kvm, pytest.mark.debian]


def test_blkfront_reads_and_writes_through_a_v2_grant_table(default_images, tmp_path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"HOSPES-V2-DISK".ljust(512, b"\0") + bytes(8 * 1024 * 1024 - 512))
    script = (
        "dmesg | grep -o 'Grant tables using version [0-9] layout'; "
        "dd if=/dev/xvda bs=14 count=1 2>/dev/null; echo; "
        "echo written-through-v2 | dd of=/dev/xvda bs=512 seek=100 conv=fsync 2>/dev/null"
    )
    p = run_hospes("run", "--cmdline", "console=hvc0 quiet grant_table.version=2", "--disk", str(image),
                   "--", "sh", "-c", script)
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-2000:]
    lines = out.splitlines()
    assert "Grant tables using version 2 layout" in lines, out[-3000:]
    assert "HOSPES-V2-DISK" in lines
    assert image.read_bytes()[100 * 512:100 * 512 + 19] == b"written-through-v2\n"
