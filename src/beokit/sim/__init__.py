"""beokit.sim: a discrete-event simulator of beokit at scale (pure Python, no I/O).

* :mod:`beokit.sim.core`: the event heap, the clock, CPU pools;
* :mod:`beokit.sim.cast`: nettee chains and trees (``beo cast``): rates,
  pipeline, control plane, slow nodes, failures, ``-heal`` and retries;
* :mod:`beokit.sim.launch`: ``beo run``'s launch tree, and work stealing;
* :mod:`beokit.sim.gossip`: dshd's gossip, all-to-all and push;
* :mod:`beokit.sim.machine`: the machine figures (measured on this box by
  ``bench/bench_sim.py``) and the clusters projected;
* :mod:`beokit.sim.project`: ``python3 -m beokit.sim project``.

For the CLIs' ``--dry-run``::

    from beokit.sim import predict_cast, predict_run
    p = predict_cast(n_nodes, size_bytes, rate_bps, chains=4)
    print(p.explain())          # one line; p.seconds, p.parts

docs/scale.md has the model's assumptions, its calibration and the
projections.
"""

from beokit.sim.core import CpuPool, SimulationError, Simulator
from beokit.sim.predict import Prediction, predict_cast, predict_run

__all__ = ["CpuPool", "Prediction", "SimulationError", "Simulator", "predict_cast",
           "predict_run"]  # fmt: skip
