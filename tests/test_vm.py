"""`fastivc vm`: the guest is built and cached, two guests boot on one virtual
network, talk plain TCP to each other, and both see the ivshmem fabric that the
host sees.  Under TCG where KVM does not boot a guest (about 10 s per boot
here); skipped only when QEMU cannot run at all."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fastivc.vm import Network, VMError, build, qemu_available
from fastivc.vm import check as vmcheck

pytestmark = pytest.mark.skipif(qemu_available() is not None,
                                reason=f"QEMU cannot run: {qemu_available()}")


@pytest.fixture(scope="module")
def net():
    with Network(2) as n:
        yield n


def test_guest_build_is_cached():
    first = build()
    again = build()
    assert not again.built
    assert (again.kernel, again.initramfs) == (first.kernel, first.initramfs)
    assert first.kernel.stat().st_size > 1 << 20
    assert {"virtio_net", "virtio_pci"} <= set(first.modules)
    # each module is loaded after what it depends on
    assert first.modules.index("virtio") < first.modules.index("virtio_net")


def test_two_guests_boot_and_say_how(net):
    assert net.accel in ("kvm", "tcg")
    assert all(g.boot_seconds is not None for g in net.guests)
    r = net.guests[1].run("uname -r; hostname")
    assert r.rc == 0 and r.output.split() == [net.image.kernel_version, "vm1"]


def test_agent_returns_output_and_exit_code(net):
    r = net.guests[0].run("printf 'a\\nb\\0c'; exit 7")
    assert (r.rc, r.output) == (7, "a\nb\0c")


def test_plain_tcp_request_response_between_guests(net):
    a, b = net.guests
    rr = vmcheck._rr(b, a, seconds=1.0, preload=False)
    assert rr["samples"] > 100 and rr["p50_us"] > 0


def test_ivshmem_device_visible_in_each_guest(net):
    for g in net.guests:
        devs = vmcheck.ivshmem_devices(g)
        assert len(devs) == 1, devs
        assert devs[0]["size"] == net.fabric_size


def test_fabric_memory_is_shared_by_host_and_guests(net):
    devs = [vmcheck.ivshmem_devices(g)[0] for g in net.guests]
    assert vmcheck._shared_memory(net, devs) == {"guests_read_host_word": True,
                                                 "host_read_guest_words": True}


def test_library_loads_in_guest_and_connection_stays_plain(net):
    a, b = net.guests
    rr = vmcheck._rr(b, a, seconds=0.5, preload=True)
    assert rr["loaded"], rr
    assert any("plain TCP" in ln for ln in rr["client_log"]), rr


def test_qemu_is_killed_on_close():
    with Network(1) as n:
        procs = [g.proc for g in n.guests]
        assert all(p.poll() is None for p in procs)
        fabric = n.fabric
    assert all(p.poll() is not None for p in procs)
    assert not fabric.exists()  # the fresh fabric file is removed with the guests


def test_fabric_size_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        Network(2, fabric_size=3 << 20)


def test_missing_fabric_file_is_refused(tmp_path):
    with pytest.raises(VMError, match="no such file"):
        with Network(1, fabric=tmp_path / "nope"):
            pass


def test_cli_vm_run():
    r = subprocess.run([sys.executable, "-m", "fastivc", "vm", "run", "--guests", "1", "--",
                        "echo hello from $(hostname)"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "hello from vm0" in r.stdout
    assert "guests up (" in r.stderr
