"""Many independent fits at once: ``fit_batch`` (and ``multistart`` on top of it).

Under ``vmap`` a ``while_loop`` runs until its slowest member stops, so one fit that
needs 500 steps would make a thousand easy fits pay for 500 steps each.  The engine
steps only fits that still run, regrouping them as others finish, and every fit takes
exactly the steps it would take alone, so a batch equals its fits run one by one up to
round-off.

- ``front``: ``fit_batch``: checks (``_validate``), one member's set-up
  (``_setup.prepare``), the data as batched arrays; under a JAX transformation the
  batch falls back to ``vmap(least_squares)``.
- ``host``: layout (chunks, parts, blocks), devices, the CPU path's host loop, joining
  results.
- ``programs`` (one fit's pieces; the CPU path's programs), ``device`` (the accelerator
  path's one program), ``packing`` (the state between programs): the traced side.
- ``runtime``: worker threads, caches (``fitfleet.clear_caches``), switches
  (``fitfleet.engine_settings``), launch and fetch counters.
"""

from .front import fit_batch
from .runtime import clear_caches, settings, wait

__all__ = ["clear_caches", "fit_batch", "settings", "wait"]
