"""contrib/provision.example.toml, read by beo boot's own config parser (boot.config.load),
and every nettee command line it makes served to a node valid for nettee's own parser;
the topology file docs/provision.md shows for node5 is the one this config serves."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from beokit.boot import config
from beokit.nettee import options
from beokit.provision import plan

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "contrib" / "provision.example.toml"
IMAGE = "/srv/images/compute.img"


def load(tmp: Path) -> config.BootConfig:
    """The example as it is, but for provision.image (the parser wants the file to
    exist): a file of this test's."""
    text = EXAMPLE.read_text()
    assert text.count(f'image = "{IMAGE}"') == 1
    (tmp / "compute.img").write_bytes(b"x" * 4096)
    cfg = tmp / "provision.toml"
    cfg.write_text(text.replace(IMAGE, str(tmp / "compute.img")))
    return config.load(cfg)


def test_the_example_config_parses_as_documented(tmp_path):
    c = load(tmp_path)
    pv, nt = c.provision, c.nettee
    assert pv is not None and pv.image == tmp_path / "compute.img"
    assert pv.target == "/dev/vda" and pv.start_after == 0 and pv.start_wait == 120
    assert pv.follow_up and pv.report_port_of(nt.port) == 7002
    assert nt.order[0] == "boot" and len(nt.order) == 1001 and nt.port == 7000
    assert c.kernel == "beokit.vmlinuz" and c.initrd == "beokit.initrd" and c.http_port == 8080
    assert str(c.node_ip(5)) == "10.0.1.5"


def test_every_line_the_example_serves_is_valid_nettee(tmp_path):
    c = load(tmp_path)
    for i, name in enumerate(c.nettee.order):
        keys = plan.parse_topology_file(c.nettee.file_for(name).decode())
        words = shlex.split(keys["command"])
        nc = options.parse_args(words[1:])
        assert words[0] == "nettee" and nc.port == 7000 and nc.heal and nc.digest
        assert nc.root == (i == 0)
        if i:
            assert nc.timeout == 600


def test_the_documented_topology_file_is_what_the_example_serves(tmp_path):
    doc = (ROOT / "docs" / "provision.md").read_text()
    m = re.search(r"\$ curl -s tftp://10\.0\.0\.1/nettee/node5\.conf\n(.*?)```", doc, re.S)
    assert m, "the node5.conf example is not in docs/provision.md"
    served = load(tmp_path).nettee.file_for("node5").decode()
    assert m.group(1).strip() == served.strip()
