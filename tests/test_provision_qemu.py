"""Real machines: 4 qemu VMs (TCG, iPXE ROM, -boot n) PXE-boot from beo boot on a
vcluster switch, load the kernel and the initramfs of `beo boot initrd` over HTTP,
take their lease again from userspace, join the chain of `beo boot provision` and
receive a 64 MiB image onto their virtio disk; the test reads each disk file and
compares sha256.

Needs root, qemu-system-x86_64, the iPXE ROMs (ipxe-qemu), cpio, and a Debian
cloud kernel package and busybox-static (fetched with `apt-get download` into
BEOKIT_KERNEL_CACHE, default /var/cache/beokit-test, when not there yet)."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from boot_helpers import Server
from vcluster_fixture import needs_vcluster, vcluster  # noqa: F401

from beokit.vcluster import plan as vplan

pytestmark = [pytest.mark.root, pytest.mark.slow, needs_vcluster,
              pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu"),
              pytest.mark.skipif(shutil.which("cpio") is None, reason="needs cpio")]  # fmt: skip

VMS = 4
SIZE = 64 << 20
CACHE = Path(os.environ.get("BEOKIT_KERNEL_CACHE", "/var/cache/beokit-test"))


def fetch_debs() -> tuple[Path, Path]:
    """The kernel package and busybox-static, downloaded once into CACHE."""
    CACHE.mkdir(parents=True, exist_ok=True)
    kernel = sorted(CACHE.glob("linux-image-*-cloud-amd64_*.deb"))
    bbox = sorted(CACHE.glob("busybox-static_*.deb"))
    if not kernel or not bbox:
        deps = subprocess.run(["apt-cache", "depends", "linux-image-cloud-amd64"],
                              capture_output=True, text=True).stdout  # fmt: skip
        # (the first line of the output is the metapackage itself: only its dependency)
        names = [w for w in deps.split() if w.startswith("linux-image-") and w.endswith("-cloud-amd64")
                 and w != "linux-image-cloud-amd64"]  # fmt: skip
        if not names:
            pytest.skip("no linux-image-*-cloud-amd64 known to apt (apt-get update?)")
        r = subprocess.run(["apt-get", "download", names[0], "busybox-static"], cwd=CACHE,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
        if r.returncode != 0:
            pytest.skip(f"apt-get download failed: {r.stderr.strip()[-200:]}")
        kernel = sorted(CACHE.glob("linux-image-*-cloud-amd64_*.deb"))
        bbox = sorted(CACHE.glob("busybox-static_*.deb"))
        if not kernel or not bbox:
            pytest.fail(f"apt-get download {names[0]} busybox-static left no .deb in {CACHE}: "
                        f"{sorted(p.name for p in CACHE.iterdir())}")  # fmt: skip
    return kernel[-1], bbox[-1]


def rom() -> str:
    for path in ("/usr/lib/ipxe/qemu/pxe-e1000.rom", "/usr/share/qemu/pxe-e1000.rom"):
        if os.path.exists(path):
            return path
    pytest.skip("no iPXE e1000 ROM (apt-get install ipxe-qemu)")


def build_boot_files(tmp: Path) -> None:
    from beokit.provision import initrd

    kernel_deb, bbox_deb = fetch_debs()
    subprocess.run(["dpkg-deb", "-x", str(bbox_deb), str(tmp / "bb")], check=True)
    initrd.build(tmp / "root", kernel_deb=kernel_deb, busybox=tmp / "bb" / "bin" / "busybox")


def write_config(tmp: Path, vc, macs: list[str]) -> Path:
    net = vc.plan.network(0)
    (tmp / "image.bin").write_bytes(os.urandom(SIZE))
    m = "\n".join(f'"{mac}" = {i + 1}' for i, mac in enumerate(macs))
    cfg = tmp / "boot.toml"
    cfg.write_text(f"""
[server]
address = "{vc.addr(1)}"
root = "root"
control = "ctl.sock"
http_port = 8080
[network]
subnet = "{net}"
pool = "{net.network_address + 2560}-{net.network_address + 2815}"
[nodes]
base = "{net.network_address + 256}"
count = 100
[nodes.macs]
{m}
[boot]
ipxe_script = "boot.ipxe"
kernel = "beokit.vmlinuz"
initrd = "beokit.initrd"
cmdline = "console=ttyS0 quiet panic=5"
[nettee]
order = "boot,node[1-{VMS}]"
join_wait = 20
parent_wait = 900
[provision]
image = "image.bin"
target = "/dev/vda"
start_after = {VMS}
start_wait = 600
""")
    return cfg


def start_vm(tmp: Path, switch: str, i: int, mac: str) -> subprocess.Popen:
    """A VM with two NICs on the switch: an e1000 whose iPXE ROM PXE-boots (a
    temporary pool address), and a virtio NIC (MAC ``mac``, the node's) for Linux:
    the virtio ROM of ipxe-qemu here is not run by SeaBIOS under qemu 7.2, and the
    cloud kernel has no e1000 driver."""
    taps = (f"bkpq{i}p", f"bkpq{i}v")
    for tap in taps:
        for argv in (["ip", "tuntap", "add", tap, "mode", "tap"],
                     ["ip", "link", "set", tap, "master", vplan.BRIDGE],
                     ["ip", "link", "set", tap, "up"]):  # fmt: skip
            subprocess.run(["ip", "netns", "exec", switch, *argv], check=True)
    disk = tmp / f"disk{i}.img"
    with open(disk, "wb") as fh:
        fh.truncate(SIZE)
    argv = ["ip", "netns", "exec", switch, "qemu-system-x86_64", "-m", "384", "-nographic",
            "-no-reboot", "-boot", "n",
            "-netdev", f"tap,id=p0,ifname={taps[0]},script=no,downscript=no",
            "-device", f"e1000,netdev=p0,mac={mac[:-5]}dd:{mac[-2:]},romfile={rom()}",
            "-netdev", f"tap,id=v0,ifname={taps[1]},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=v0,mac={mac},romfile=",
            "-drive", f"file={disk},format=raw,if=virtio"]  # fmt: skip
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=(tmp / f"vm{i}.log").open("wb"),
                            stderr=subprocess.STDOUT)  # fmt: skip


def test_four_vms_pxe_boot_and_receive_the_image(vcluster, tmp_path):  # noqa: F811
    t0 = time.monotonic()
    build_boot_files(tmp_path)
    built = time.monotonic() - t0
    vc = vcluster(n=1, rate="1gbit", prefix="bkpq")
    switch = vplan.switch_ns(vc.prefix, 0, 0)
    macs = [f"52:54:00:be:0c:{i:02x}" for i in range(1, VMS + 1)]
    cfg = write_config(tmp_path, vc, macs)
    os.chmod(tmp_path, 0o755)
    srv = Server(cfg, bind="0.0.0.0", ns=vc.ns(1),
                 ports={"dhcp": 67, "tftp": 69, "dns": 0, "pxe": 0})  # fmt: skip
    vms: list[subprocess.Popen] = []
    try:
        rnd = vc.popen(1, sys.executable, "-m", "beokit.cli", "boot", "-c", str(cfg), "provision",
                       stdout=(tmp_path / "round.log").open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
        vms = [start_vm(tmp_path, switch, i + 1, mac) for i, mac in enumerate(macs)]
        code = rnd.wait(900)
        text = (tmp_path / "round.log").read_text()
        logs = {i: (tmp_path / f"vm{i}.log").read_text(errors="replace")[-1500:]
                for i in range(1, VMS + 1)}  # fmt: skip
        assert code == 0, text + "\n".join(logs.values())
        assert f"{VMS} of {VMS} node(s) verified" in text
        for vm in vms:
            vm.wait(120)
        want = hashlib.sha256((tmp_path / "image.bin").read_bytes()).hexdigest()
        for i in range(1, VMS + 1):
            disk = (tmp_path / f"disk{i}.img").read_bytes()
            assert hashlib.sha256(disk[:SIZE]).hexdigest() == want, f"disk of vm{i}"
            assert "beo-provision-result 0" in (tmp_path / f"vm{i}.log").read_text(errors="replace")
        print(f"qemu provisioning test: {time.monotonic() - t0:.1f} s (boot files {built:.1f} s)")
    finally:
        for vm in vms:
            if vm.poll() is None:
                vm.kill()
            vm.wait()
        srv.stop()
        for path in glob.glob(str(tmp_path / "disk*.img")):
            os.unlink(path)
