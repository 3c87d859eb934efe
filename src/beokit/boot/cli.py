"""``beo boot``: the PXE server (DHCP + TFTP + DNS) — argument parsing only.

``beo boot -c CONFIG`` runs the server; ``beo boot admit MAC [N]`` and
``beo boot status`` talk to the running server through its control socket
(``server.control`` in the config: a Unix socket, mode 0600, so only its
owner — root — can admit nodes); ``--export-dnsmasq`` prints the same
cluster as a dnsmasq configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from beokit.errors import EXIT_FAILURE, EXIT_OK, BeokitError, OneLineParser, UsageError, int_in

if TYPE_CHECKING:
    from beokit.boot.config import BootConfig

PROG = "beo boot"
_PORT = int_in("port", 0, 65535, " (0 = off)")
_DHCP_PORT = int_in("port", 0, 65534, " (0 = off; replies go to this port + 1)")


def _addr(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad address {text!r}") from None


def _node(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"bad node number {text!r}")
    return int(text)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``boot`` under the ``beo`` umbrella."""
    p = sub.add_parser(
        "boot",
        help="PXE server: DHCP + TFTP + DNS (+ HTTP, proxyDHCP) for diskless nodes",
        description="One long-running PXE boot server for 1000+ diskless nodes: DHCP with "
        "linear node numbering (nodeN = base + N), temporary leases until `beo boot admit`, "
        "TFTP with a bandwidth cap shared round-robin, a DNS responder for the cluster's "
        "names, optional HTTP boot and proxyDHCP. SIGHUP re-reads the config, SIGUSR1 logs "
        "the leases and transfers. See docs/boot.md.",
    )
    p.__class__ = OneLineParser
    p.add_argument("-c", "--config", metavar="FILE",
                   help="TOML config (example: beo config example boot)")
    p.add_argument("--bind", type=_addr, default="0.0.0.0",
                   help="local address of every socket (default 0.0.0.0: needed to hear DHCP "
                   "broadcasts)")  # fmt: skip
    p.add_argument(
        "--interface",
        metavar="IFACE",
        default="",
        help="tie DHCP to this interface (SO_BINDTODEVICE), reply to 255.255.255.255",
    )
    p.add_argument("--dhcp-port", type=_DHCP_PORT, default=67, help="DHCP server port (default 67; "
                   "replies go to this port + 1; 0 = no DHCP)")  # fmt: skip
    p.add_argument("--tftp-port", type=_PORT, default=69, help="TFTP port (default 69, 0 = off)")
    p.add_argument("--dns-port", type=_PORT, default=53, help="DNS port (default 53, 0 = off)")
    p.add_argument(
        "--pxe-port",
        type=_PORT,
        default=4011,
        help="proxyDHCP boot-server port (default 4011, with --proxy)",
    )
    p.add_argument(
        "--http-port",
        type=_PORT,
        default=None,
        help="HTTP boot port (default: server.http_port of the config, 0 = off)",
    )
    p.add_argument("--metrics-port", type=_PORT, default=None, metavar="PORT",
                   help="serve Prometheus metrics (text format) on http://BIND:PORT/metrics: "
                   "leases, DHCP answers by type, drops and deferrals, transfers shed, TFTP "
                   "and HTTP bytes and transfers in progress (default: server.metrics_port of "
                   "the config, 0 = off)")  # fmt: skip
    p.add_argument("--proxy", action="store_true",
                   help="proxyDHCP: answer only PXE clients, with boot information and no "
                   "address, beside the site's own DHCP server")  # fmt: skip
    p.add_argument(
        "--export-dnsmasq",
        metavar="FILE",
        nargs="?",
        const="-",
        help="write an equivalent dnsmasq config to FILE (default stdout) and exit",
    )
    p.add_argument(
        "--dump-leases",
        metavar="FILE",
        nargs="?",
        const="-",
        help="write the leases and admitted nodes of the lease journal as JSON to FILE "
        "(default stdout) and exit (a running server: `status`)",
    )
    p.add_argument("--check", action="store_true", help="check the config and exit")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log (-vv: packets)")
    sub2 = p.add_subparsers(dest="boot_command", metavar="SUBCOMMAND")
    a = sub2.add_parser("admit", help="give a node its permanent number (running server)",
                        description="Admit MAC as node N (default: the lowest free number) in "
                        "the running server, through its control socket. The node keeps its "
                        "temporary address until its next renewal, which is refused (DHCPNAK) "
                        "so that it comes back at once for base + N.")  # fmt: skip
    a.__class__ = OneLineParser
    a.add_argument("mac", metavar="MAC")
    a.add_argument("node", metavar="N", nargs="?", type=_node)
    a.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS)
    s = sub2.add_parser(
        "status",
        help="the running server's leases and transfers (JSON)",
        description="Ask the running server (control socket) for its state.",
    )
    s.__class__ = OneLineParser
    s.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS)
    _add_provision(sub2)
    return p


def _add_provision(sub2: argparse._SubParsersAction) -> None:
    """``beo boot provision``: a provisioning round beside the running server."""
    v = sub2.add_parser("provision", help="run a provisioning round: nodes that boot take "
                        "their place in a nettee chain and receive the image",
                        description="Pin the image (sha256 at the start), answer the nodes' "
                        "reports ([provision] report_port), start the chain's root once "
                        "provision.start_after nodes are ready or after start_wait seconds, "
                        "show every node's stage, name the nodes that never booted, died or "
                        "missed the round; follow-up rounds for late nodes. Exit 0 when every "
                        "node of the order verified its copy. See docs/provision.md.")  # fmt: skip
    v.__class__ = OneLineParser
    v.add_argument("image", metavar="IMAGE", nargs="?", help="default: provision.image")
    v.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS)
    v.add_argument("--status", action="store_true",
                   help="print the running (or last) round's status as JSON and exit")
    v.add_argument("--bind", type=_addr, default="0.0.0.0", help="address of the report port")
    i = sub2.add_parser("initrd", help="build the kernel and initramfs diskless nodes boot",
                        description="Write NAME.vmlinuz (from a stock kernel package, e.g. "
                        "`apt-get download linux-image-6.1.0-57-cloud-amd64`) and NAME.initrd "
                        "(static busybox, virtio modules, this Python and beokit, /init: lease, "
                        "`beo provision node`, power off) into server.root (or --out), and "
                        "print the [boot] lines that make beo boot serve them with an iPXE "
                        "script. See docs/provision.md.")  # fmt: skip
    i.__class__ = OneLineParser
    i.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS)
    i.add_argument("--kernel-deb", metavar="DEB", help="a linux-image-* package")
    i.add_argument("--kernel", metavar="FILE", help="a kernel (with --modules)")
    i.add_argument("--modules", metavar="DIR", help="its lib/modules/VERSION directory")
    i.add_argument("--busybox", metavar="FILE", default="/bin/busybox",
                   help="a statically linked busybox (busybox-static's /bin/busybox)")
    i.add_argument("--out", metavar="DIR", help="where to write (default: server.root)")
    i.add_argument("--name", default="beokit", help="file names: NAME.vmlinuz, NAME.initrd")


def _control(path: Path | None, req: dict) -> dict:
    if path is None:
        raise UsageError("the config has no server.control socket: cannot reach the server")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        try:
            s.connect(str(path))
            s.sendall(json.dumps(req).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError as e:
            why = e.strerror or "no answer within 5 s"
            raise BeokitError(f"cannot reach the server at {str(path)!r}: {why}") from None
    try:
        out = json.loads(buf or b"{}")
    except ValueError:
        out = None
    if not isinstance(out, dict):
        raise BeokitError(f"the server at {str(path)!r} gave no valid answer: {buf[:80]!r}")
    return out


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except BeokitError as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return e.exit_status


def _print(text: str) -> None:
    """Write to stdout now: a reader that has gone (``beo boot status | head``) shows
    here, as a BrokenPipeError the ``beo`` command ends quietly on (status 141), not
    as an error message when the interpreter flushes at exit."""
    sys.stdout.write(text)
    sys.stdout.flush()


def _write_out(where: str, text: str, option: str) -> None:
    if where == "-":
        _print(text)
        return
    try:
        Path(where).write_text(text)
    except OSError as e:
        raise UsageError(f"cannot write {option} {where!r}: {e.strerror}") from None


def _offline(cfg: BootConfig, args: argparse.Namespace) -> int:
    """--export-dnsmasq and --dump-leases: from the config and the lease journal on disk."""
    import time

    from beokit.boot import lease_file
    from beokit.boot.export import dnsmasq_conf
    from beokit.boot.leases import LeaseDB

    db = LeaseDB(cfg)
    path = cfg.lease_file
    if path is not None and path.exists():
        try:
            problem = lease_file.read_into(db, path, time.time())
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise UsageError(f"bad lease file {str(path)!r}: {e}") from None
        if problem:
            sys.stderr.write(f"{PROG}: lease journal {str(path)!r}: {problem}; only the "
                             "records before it are shown\n")  # fmt: skip
    if args.export_dnsmasq is not None:
        _write_out(args.export_dnsmasq, dnsmasq_conf(cfg, db.admitted), "--export-dnsmasq")
    if args.dump_leases is not None:
        _write_out(args.dump_leases, db.to_json(), "--dump-leases")
    return EXIT_OK


def _initrd(cfg: BootConfig, args: argparse.Namespace) -> int:
    from beokit.provision import initrd

    if bool(args.kernel_deb) == bool(args.kernel) or bool(args.kernel) != bool(args.modules):
        raise UsageError("give --kernel-deb DEB, or --kernel FILE with --modules DIR")
    for opt, value in (("--kernel-deb", args.kernel_deb), ("--kernel", args.kernel)):
        if value and not Path(value).is_file():
            raise UsageError(f"bad {opt} {value!r}: no such file")
    if args.modules and not Path(args.modules).is_dir():
        raise UsageError(f"bad --modules {args.modules!r}: not a directory")
    if not initrd.NAME_RE.match(args.name):
        raise UsageError(f"bad --name {args.name!r}: letters, digits, '-', '_', '.'")
    out = Path(args.out) if args.out else cfg.root
    built = initrd.build(out, kernel_deb=Path(args.kernel_deb) if args.kernel_deb else None,
                         kernel=Path(args.kernel) if args.kernel else None,
                         modules=Path(args.modules) if args.modules else None,
                         busybox=Path(args.busybox), name=args.name)  # fmt: skip
    _print(f"{built.kernel}: {built.kernel_bytes:,} bytes\n{built.initrd}: "
           f"{built.initrd_bytes:,} bytes\n[boot] lines for {args.config}:\n"
           f'ipxe_script = "boot.ipxe"\nkernel = "{built.kernel.name}"\n'
           f'initrd = "{built.initrd.name}"\ncmdline = "console=ttyS0 quiet panic=5"\n')
    return EXIT_OK


def _provision(cfg: BootConfig, args: argparse.Namespace) -> int:
    from beokit.provision import round as provision_round

    status = provision_round.status_path(cfg, Path(args.config))
    if args.status:
        try:
            _print(status.read_text())
        except OSError as e:
            raise UsageError(f"no round status at {str(status)!r}: {e.strerror}") from None
        return EXIT_OK
    if cfg.provision is None:
        raise UsageError("bad provision: the config has no [provision] section")
    image = Path(args.image) if args.image else cfg.provision.image
    if image is None:
        raise UsageError("bad provision.image: none in the config and no IMAGE given")
    if not image.is_file():
        raise UsageError(f"bad provision.image {str(image)!r}: no such file")
    opts = provision_round.RoundOptions(image=image, status_file=status, bind=args.bind)
    return provision_round.run_round(cfg, opts)


def _run(args: argparse.Namespace) -> int:
    from beokit.boot import config

    if not getattr(args, "config", None):
        raise UsageError("missing -c CONFIG")
    cfg = config.load(args.config)
    cmd = args.boot_command
    if cmd == "admit":
        mac = config.normalize_mac(args.mac)
        out = _control(cfg.control, {"cmd": "admit", "mac": mac, "node": args.node})
        if not out.get("ok"):
            raise UsageError(f"admit {mac}: {out.get('error')}")
        _print(f"{out['mac']} is node {out['node']}: {out['name']} {out['ip']}\n")
        return EXIT_OK
    if cmd == "provision":
        return _provision(cfg, args)
    if cmd == "initrd":
        return _initrd(cfg, args)
    if cmd == "status":
        out = _control(cfg.control, {"cmd": "dump"})
        _print(json.dumps(out, indent=1) + "\n")
        return EXIT_OK if out.get("ok") else EXIT_FAILURE
    if args.export_dnsmasq is not None or args.dump_leases is not None:
        return _offline(cfg, args)
    if not cfg.root.is_dir():
        raise UsageError(f"bad server.root {str(cfg.root)!r}: not a directory")
    from beokit.boot.server import ServerOptions, check_paths, run_server

    opts = ServerOptions(Path(args.config), bind=args.bind, interface=args.interface,
                   dhcp_port=args.dhcp_port, tftp_port=args.tftp_port, dns_port=args.dns_port,
                   pxe_port=args.pxe_port, http_port=args.http_port, proxy=args.proxy,
                   metrics_port=args.metrics_port)  # fmt: skip
    check_paths(cfg, opts)
    if args.check:
        _print(f"{args.config}: OK\n")
        return EXIT_OK
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s beo-boot %(levelname)s %(message)s",
                        stream=sys.stderr)  # fmt: skip
    return run_server(opts, cfg)
