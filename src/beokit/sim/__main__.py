"""``python3 -m beokit.sim``: projections, and one prediction from the command line.

    python3 -m beokit.sim project [--nodes 10000] [--size 4G] [--png-dir docs]
    python3 -m beokit.sim cast NODES SIZE [--rate 10g] [--chains K] [--fanout F] [--roots R]
    python3 -m beokit.sim run HOSTS [-k K] [--launch-cost S] [--flat] [--steal]
"""

from __future__ import annotations

import argparse
import sys

from beokit.errors import EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["project"]:
        from beokit.sim.project import main as project

        return project(argv[1:])
    from beokit.cli import parse_size
    from beokit.vcluster.plan import PlanError, parse_rate

    def rate(text: str) -> int:
        try:
            return parse_rate(text)
        except PlanError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    ap = argparse.ArgumentParser(prog="python3 -m beokit.sim",
                                 description="beokit's simulator: predictions and projections "
                                             "(docs/scale.md)")  # fmt: skip
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("project", help="tables and plots for 1,000 and 10,000 nodes")
    c = sub.add_parser("cast", help="predict a beo cast")
    c.add_argument("nodes", type=int)
    c.add_argument("size", type=parse_size)
    c.add_argument("--rate", type=rate, default=10**9, help="port rate (default 1gbit)")
    c.add_argument("--chains", type=int, default=1)
    c.add_argument("--fanout", type=int, default=1)
    c.add_argument("--roots", type=int, default=1)
    c.add_argument("--launch-cost", type=float, help="seconds per launch (default: ssh)")
    c.add_argument("--slow", type=float, default=0.0, help="fraction of slow nodes")
    c.add_argument("--fail", type=float, default=0.0, help="fraction of nodes that crash")
    r = sub.add_parser("run", help="predict a beo run")
    r.add_argument("hosts", type=int)
    r.add_argument("-k", type=int, default=3)
    r.add_argument("--launch-cost", type=float, help="seconds per launch (default: ssh)")
    r.add_argument("--flat", action="store_true")
    r.add_argument("--steal", action="store_true")
    a = ap.parse_args(argv)
    from beokit.sim.predict import predict_cast, predict_run

    try:
        if a.what == "cast":
            p = predict_cast(a.nodes, a.size, a.rate, chains=a.chains, fanout=a.fanout,
                             roots=a.roots, launch_cost=a.launch_cost, slow_fraction=a.slow,
                             fail_fraction=a.fail)  # fmt: skip
        else:
            p = predict_run(a.hosts, a.k, a.launch_cost, mode="flat" if a.flat else "tree",
                            steal=a.steal)  # fmt: skip
    except ValueError as exc:
        print(f"beokit.sim: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(p.explain())
    return 0


if __name__ == "__main__":
    sys.exit(main())
