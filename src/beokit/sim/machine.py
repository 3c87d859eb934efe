"""The models' machine parameters: this box as measured, and the clusters projected.

``BOX_PARAMS`` are the figures ``bench/bench_sim.py --parts params,...``
measured on this 2-CPU box (the date and the command are in docs/scale.md);
the bench measures them again on every run and predicts with its own
figures, these are the defaults of :func:`beokit.sim.predict_cast` and
:func:`beokit.sim.predict_run` and of the projections.

What a cluster of real machines changes, and what is assumed (docs/scale.md
says so beside every table):

* every node has its own CPU: per-byte and per-launch CPU no longer queue
  on two shared cores (``shared_cores=None``), but a node's own work still
  takes the time it took here (same interpreter, same code);
* the wire: Ethernet frames cost 38 bytes beyond the IP packet (header,
  FCS, preamble, inter-frame gap), so TCP carries 1448 of every 1538 bytes
  at MTU 1500 (``Network.overhead=38``; ``tc tbf`` counts 14);
* one-way latency 50 us per hop (host stack + one switch), no standing
  queue (``hop_queue=0``: a chain's links all run at the same rate, so no
  link is a bottleneck that queues);
* launching over ssh: the latency of an ssh session measured here on an
  idle loopback (CPU-bound here: a lower bound for a network's round
  trips), a fresh ``python3`` for every agent.
"""

from __future__ import annotations

from dataclasses import replace

from beokit.sim.cast import NetteeCosts, Network
from beokit.sim.launch import LaunchCosts

# bench/bench_sim.py --parts params,run --runs 2 (2026-12-07, the busy launch tree; the
# vcluster figures from the run before it; docs/scale.md, "Calibration").  An agent's own
# costs from per-agent accounting (18:22 and 18:29 UTC): a relayed line 56-78 us (the
# morning's 67 us kept), emit (its 1.08 ms a leaf less the spawn and watch figures here),
# an agent launched; idle: its threads' CPU in /proc while waiting, 0.23-0.31 ms/s
BOX_PARAMS: dict[str, float] = {
    "hop_latency": 9.25e-06,  # loopback TCP, one way (ping-pong / 2, Python both ends)
    "vc_latency": 60e-6,  # one hop of the virtual cluster (veth, bridge, tbf), one way
    "spawn_cpu": 0.00025,  # Popen, in the parent
    "watch_cpu": 0.000331,  # the parent's thread watching a host, reading its output
    "leaf_cpu": 0.000682,  # sh -c true itself
    "fork_cpu": 0.000375,  # the fork server's fork of an agent
    "exit_cpu": 0.000883,  # that agent's exit
    "agent_cpu": 0.00455,  # an agent from its fork to its hello
    "root_msg_cpu": 1.74e-05,  # one message at beo run's root
    "relay_cpu": 6.71e-05,  # one message relayed by one agent
    "emit_cpu": 0.000166,  # one message an agent sends for a host it watches (encode, send)
    "agent_launch_cpu": 0.00246,  # an agent's Python per agent it launches (fork request .. relay)
    "agent_idle_cpu": 0.00025,  # cores a live agent burns waiting (its heartbeat; /proc)
    "run_base_cpu": 0.098,  # beo run's own start (not in its elapsed time)
    "root_tip_cpu": 5.45e-10,  # CPU per byte of a 2-node chain's root and tip, loopback
    "mid_cpu": 6.3e-10,  # CPU per byte of a node between them
    "loop_cap": 3.61e+09,  # bytes/s one loopback hop carries at most
    "nettee_start": 0.0804,  # the root's start-up and exit, receivers waiting
    "ctrl_hop": 0.0175,  # forming + reports, per hop
    "form_entry": 3.76e-07,  # a node named in a ready message, per hop
    "report_entry": 9.89e-06,  # a node's report relayed, per hop
    "vc_framing": 0.9564,  # TCP payload / port rate through the virtual cluster's tbf
    "vc_queue": 0.0,  # queueing delay per hop in the virtual cluster, s
    "ssh_session": 0.297,  # one `ssh host true` on an idle loopback, wall s
    "ssh_client_cpu": 0.0758,  # its client's share of the CPU
    "python_start": 0.0391,  # a fresh interpreter importing the agent, CPU s
}


def box_launch(delay: float = 0.1, params: dict[str, float] | None = None) -> LaunchCosts:
    """``beo run -R exec --launch-delay DELAY`` on this box (cores shared: see the model)."""
    p = params or BOX_PARAMS
    return LaunchCosts(delay=delay, spawn_cpu=p["spawn_cpu"], watch_cpu=p["watch_cpu"],
                       fork_cpu=p["fork_cpu"],
                       agent_cpu=p["agent_cpu"], leaf_cpu=p["leaf_cpu"],
                       relay_cpu=p["relay_cpu"], root_msg_cpu=p["root_msg_cpu"],
                       emit_cpu=p.get("emit_cpu"), agent_launch_cpu=p.get("agent_launch_cpu"),
                       agent_idle_cpu=p["agent_idle_cpu"], hop_latency=p["hop_latency"])  # fmt: skip


def ssh_launch(params: dict[str, float] | None = None, latency: float = 50e-6) -> LaunchCosts:
    """``beo run`` over ssh on a cluster: each node's CPU its own.

    A launch is one ssh session: the parent's Popen (``spawn_cpu``), its client's
    CPU on the parent's node (``client_cpu``), the rest of the session's measured
    time as latency (the server's CPU and the round trips), then a fresh
    interpreter for an agent.
    """
    p = params or BOX_PARAMS
    return LaunchCosts(delay=max(0.0, p["ssh_session"] - p["ssh_client_cpu"]),
                       spawn_cpu=p["spawn_cpu"], watch_cpu=p["watch_cpu"],
                       client_cpu=p["ssh_client_cpu"], fork_cpu=0.0,
                       agent_cpu=p["python_start"],
                       leaf_cpu=p["leaf_cpu"], relay_cpu=p["relay_cpu"],
                       root_msg_cpu=p["root_msg_cpu"], agent_idle_cpu=0.0,
                       hop_latency=latency)  # fmt: skip


def box_nettee(params: dict[str, float] | None = None) -> NetteeCosts:
    """nettee on this box's loopback (the control plane split evenly both ways)."""
    p = params or BOX_PARAMS
    return NetteeCosts(start=p["nettee_start"], form_hop=p["ctrl_hop"] / 2,
                       report_hop=p["ctrl_hop"] / 2, form_entry=p["form_entry"],
                       report_entry=p["report_entry"], recv_cpu=p["mid_cpu"],
                       root_cpu=p["root_tip_cpu"] - p["mid_cpu"], loop_cap=p["loop_cap"])  # fmt: skip


def cluster_nettee(params: dict[str, float] | None = None) -> NetteeCosts:
    """nettee on a cluster: this box's control-plane CPU per hop, no shared cores."""
    return replace(box_nettee(params), recv_cpu=0.0, root_cpu=0.0, loop_cap=float("inf"))


def cluster_network(rate_bps: float, mtu: int = 1500, latency: float = 50e-6) -> Network:
    """A switched Ethernet data network: ``rate_bps`` per port, both ways."""
    return Network(rate_bps, mtu=mtu, overhead=38, latency=latency, hop_queue=0.0)


def vcluster_network(rate_bps: float = 200e6, params: dict[str, float] | None = None) -> Network:
    """This box's virtual cluster: tbf counts 14 bytes a frame; its queues as measured."""
    p = params or BOX_PARAMS
    return Network(rate_bps, mtu=1500, overhead=14, latency=p["vc_latency"],
                   hop_queue=p["vc_queue"])  # fmt: skip


RATES = {"1 GbE": 1e9, "10 GbE": 10e9, "25 GbE": 25e9}
