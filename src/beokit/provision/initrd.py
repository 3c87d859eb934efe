"""``beo boot initrd``: what diskless nodes boot, built from stock parts.

* the kernel of a distribution kernel package (``linux-image-*-cloud-amd64``:
  ``apt-get download`` it; unpacked with ``dpkg-deb -x``), or a kernel file and
  its modules directory;
* an initramfs (``cpio -H newc | gzip``) holding a static busybox, the kernel's
  virtio modules (loaded in dependency order by ``/init``), the Python running
  this command (binary, the shared libraries ``ldd`` names, the standard library
  as byte code in ``python3XY.zip``, its extension modules), xxhash, and beokit
  shipped as ``beo run`` ships itself (``launch.ship.zipapp_bytes``: a zip of the
  modules, byte code included) with the node command;
* ``/init``: mount, load the modules, take a lease with ``udhcpc -O 224``, run
  ``beo provision node --lease /run/lease.env``, print the result on the console
  (``beo-provision-result N``), sync, power off.

The boot server's config then names them (``[boot] kernel``, ``initrd``,
``ipxe_script``): ``beo boot`` generates the iPXE script that loads both over HTTP.
"""

from __future__ import annotations

import glob
import gzip
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from beokit.errors import BeokitError, UsageError

# in dependency order (busybox insmod has no modules.dep)
MODULES = ("failover", "net_failover", "virtio_ring", "virtio", "virtio_pci_legacy_dev",
           "virtio_pci_modern_dev", "virtio_pci", "virtio_net", "virtio_blk")  # fmt: skip
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
               "distutils", "unittest", "venv", "sqlite3", "site-packages", "dist-packages",
               "__pycache__", "curses", "dbm", "xmlrpc", "wsgiref", "msilib",
               "turtle.py", "pydoc.py", "doctest.py"}  # fmt: skip
DYNLOAD_SKIP = re.compile(r"^(_test|_tkinter|_curses|_sqlite|_dbm|_gdbm|xxlimited|_ctypes_test|_ssl|"
                          r"_decimal|readline|_codecs_(jp|kr|cn|tw|hk|iso2022)|nis|_crypt)")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHIP = ("nettee/", "provision/")  # and every top-level module of beokit (the umbrella's needs)

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /run /tmp
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in {modules}; do [ -f /modules/$m.ko ] && insmod /modules/$m.ko; done
ip link set lo up
ip link set eth0 up
echo "beo-provision: taking a lease"
udhcpc -i eth0 -q -f -t 30 -T 1 -O 224 -s /udhcpc.sh
export PYTHONHOME=/usr PYTHONPATH=/usr/lib/beokit.zip:/usr/lib/pyextra PYTHONDONTWRITEBYTECODE=1
export HOME=/root PATH=/bin:/usr/bin
/usr/bin/python3 -m beokit.cli provision node --lease /run/lease.env -v {node_args}
echo "beo-provision-result $?"
sync
poweroff -f
"""

UDHCPC = """#!/bin/sh
case "$1" in bound|renew)
  ip addr flush dev "$interface"
  ip addr add "$ip/$mask" dev "$interface"
  [ -n "$router" ] && ip route add default via "${router%% *}"
  env > /run/lease.env ;;
esac
exit 0
"""


@dataclass
class Built:
    kernel: Path
    initrd: Path
    kernel_bytes: int
    initrd_bytes: int


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        raise BeokitError(f"cannot run {argv[0]}: not installed") from None
    except subprocess.CalledProcessError as e:
        raise BeokitError(f"{' '.join(argv[:3])}: {e.stderr.strip()[:200]}") from None


def unpack_kernel(deb: Path, into: Path) -> tuple[Path, Path]:
    """The kernel and its modules directory from a kernel package."""
    _run(["dpkg-deb", "-x", str(deb), str(into)])
    kernels = sorted(into.glob("boot/vmlinuz-*"))
    mods = sorted(into.glob("lib/modules/*"))
    if not kernels or not mods:
        raise UsageError(f"bad --kernel-deb {str(deb)!r}: no boot/vmlinuz-* and lib/modules in it")
    return kernels[-1], mods[-1]


def copy_modules(moddir: Path, tree: Path) -> list[str]:
    out = tree / "modules"
    out.mkdir()
    found = []
    for name in MODULES:
        hits = list(moddir.rglob(f"{name}.ko"))
        if hits:
            shutil.copy(hits[0], out / f"{name}.ko")
            found.append(name)
    return found


def _copy_file(src: str, tree: Path) -> None:
    dst = tree / src.lstrip("/")
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(src), dst)


def copy_libs(binaries: list[str], tree: Path) -> None:
    """Every shared library ``ldd`` names for ``binaries``, at the same path."""
    for b in binaries:
        for line in _run(["ldd", b]).splitlines():
            m = re.search(r"(/\S+)\s+\(0x", line)
            if m:
                _copy_file(m.group(1), tree)


def dlopened_libs() -> list[str]:
    """Libraries glibc opens at run time, which ldd does not name: libgcc_s (for
    pthread_exit and cancellation; without it a thread's exit aborts the process)."""
    out = []
    for line in _run(["ldconfig", "-p"]).splitlines():
        m = re.search(r"^\s*(libgcc_s\.so\.1) \(libc6,x86-64\) => (\S+)", line)
        if m:
            out.append(m.group(2))
    return out[:1]


def strip_tree(tree: Path) -> None:
    """Strip the shared objects (a pyenv libpython is 23 MB with its symbols, 4 without)."""
    if shutil.which("strip") is None:
        return
    for p in tree.rglob("*"):
        if p.is_file() and not p.is_symlink() and (".so" in p.name or p.parent.name == "bin"):
            subprocess.run(["strip", "--strip-unneeded", str(p)], capture_output=True)


def stdlib_zip(tree: Path) -> Path:
    """The standard library as byte code in ``lib/python3XY.zip``."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    ver = f"{sys.version_info.major}{sys.version_info.minor}"
    dest = tree / "usr" / "lib" / f"python{ver}.zip"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.PyZipFile(dest, "w", zipfile.ZIP_DEFLATED, optimize=2) as zf:
        for entry in sorted(stdlib.iterdir()):
            if entry.name in STDLIB_SKIP or entry.name.startswith(("config-", "lib-dynload")):
                continue
            if entry.is_dir() and (entry / "__init__.py").exists():
                zf.writepy(str(entry), filterfunc=lambda p: "/test" not in p and "/tests" not in p)
            elif entry.suffix == ".py":
                zf.writepy(str(entry))
    return dest


def copy_python(tree: Path) -> list[str]:
    """The running Python: its binary, extension modules, xxhash; the files ldd needs."""
    exe = os.path.realpath(sys.executable)
    (tree / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(exe, tree / "usr" / "bin" / "python3")
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    dyn_src = Path(sysconfig.get_paths()["stdlib"]) / "lib-dynload"
    dyn = tree / "usr" / "lib" / ver / "lib-dynload"
    dyn.mkdir(parents=True)
    sos = [exe]
    for so in sorted(dyn_src.glob("*.so")):
        if not DYNLOAD_SKIP.match(so.name):
            shutil.copy2(so, dyn / so.name)
            sos.append(str(so))
    (tree / "usr" / "lib" / ver / "os.py").write_text("")  # getpath's landmark; the zip wins
    extra = tree / "usr" / "lib" / "pyextra"
    extra.mkdir(parents=True)
    try:
        import xxhash

        shutil.copytree(Path(xxhash.__file__).parent, extra / "xxhash",
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        sos += glob.glob(str(extra / "xxhash" / "*.so"))
    except ImportError:
        pass  # nettee -digest is then refused on the node: said by the round
    copy_libs(sos, tree)
    for lib in dlopened_libs():
        _copy_file(lib, tree)
    return sos


def ship_beokit(tree: Path) -> None:
    from beokit.launch.ship import zipapp_bytes

    top = Path(__file__).resolve().parent.parent
    modules = tuple(sorted(p.name for p in top.glob("*.py")))
    (tree / "usr" / "lib" / "beokit.zip").write_bytes(zipapp_bytes((*modules, *SHIP)))


def write_cpio(tree: Path, dest: Path) -> None:
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    with tempfile.TemporaryFile() as raw:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=tree,
                       input="\n".join(names).encode(), stdout=raw, check=True)  # fmt: skip
        raw.seek(0)
        with gzip.open(dest, "wb", compresslevel=6) as out:
            shutil.copyfileobj(raw, out)


def build(out: Path, *, kernel_deb: Path | None = None, kernel: Path | None = None,
          modules: Path | None = None, busybox: Path, node_args: str = "",
          name: str = "beokit") -> Built:  # fmt: skip
    """Write ``out/NAME.vmlinuz`` and ``out/NAME.initrd``."""
    if not busybox.is_file():
        raise UsageError(f"bad --busybox {str(busybox)!r}: no such file")
    if "statically linked" not in _run(["file", "-L", str(busybox)]):
        raise UsageError(f"bad --busybox {str(busybox)!r}: not statically linked "
                         "(apt-get download busybox-static)")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="beo-initrd") as tmp:
        if kernel_deb is not None:
            kernel, modules = unpack_kernel(kernel_deb, Path(tmp) / "deb")
        assert kernel is not None and modules is not None
        tree = Path(tmp) / "tree"
        (tree / "bin").mkdir(parents=True)
        shutil.copy2(busybox, tree / "bin" / "busybox")
        found = copy_modules(modules, tree)
        copy_python(tree)
        stdlib_zip(tree)
        ship_beokit(tree)
        strip_tree(tree)
        for path, text in (("init", INIT.format(modules=" ".join(found), node_args=node_args)),
                           ("udhcpc.sh", UDHCPC)):  # fmt: skip
            (tree / path).write_text(text)
            (tree / path).chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH
                                | stat.S_IXOTH)  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        kdst, idst = out / f"{name}.vmlinuz", out / f"{name}.initrd"
        shutil.copy2(kernel, kdst)
        write_cpio(tree, idst)
    return Built(kdst, idst, kdst.stat().st_size, idst.stat().st_size)
