"""Multi-starts that survive an interruption: ``prob.multistart(..., checkpoint=path)``.

The starts are drawn first (all of them, from the key), then fitted in chunks of
``every`` starts.  After each chunk the fits finished so far, the starts and a
fingerprint of the run are committed to ``path`` atomically (``fitfleet._saving.write``:
a temporary file, synced, then ``os.replace``), so a run killed at any moment leaves
the last committed chunk intact.  Running the same multi-start again with the same
``path`` reads the checkpoint, checks that it belongs to this run, skips the starts it
holds and fits the rest; once complete, it returns at once.  Every fit is independent
of the others, so the final result equals an uninterrupted run's.

"This run" means: the same problem (its PEtab tables and SBML model, by content), the
same ODE settings, the same fit options and precision, and the very same starts (the
arrays compared exactly, which covers ``n_starts``, ``key`` and the sampling).  A
checkpoint of another run is an error naming what differs, never silently reused.
"""

import json
import math

import jax
import numpy as np

from .. import _saving

FORMAT = "fitfleet.petab.checkpoint"


class CheckpointMismatch(ValueError):
    """A checkpoint file that belongs to another multi-start."""


def run(fit, starts, path, fingerprint, every=None, progress=False):
    """All starts fitted by ``fit(x0_chunk) -> Result`` (batched), in order, with the
    chunks committed to ``path`` (module docstring).  Returns the Result (numpy arrays)."""
    n = starts.shape[0]
    every = default_every(n) if every is None else int(every)
    if every < 1:
        raise ValueError(f"`checkpoint_every` must be a positive number of starts; got {every!r}.")
    fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back
    done = _resume(path, starts, fingerprint)
    n_done = 0 if done is None else _size(done)
    bar = _bar(progress, n, n_done)
    try:
        for lo in range(n_done, n, every):
            chunk = jax.tree_util.tree_map(np.asarray, fit(starts[lo : lo + every]))
            done = chunk if done is None else _concatenate(done, chunk)
            _commit(path, done, starts, fingerprint)
            if bar is not None:
                bar.update(_size(chunk))
    finally:
        if bar is not None:
            bar.close()
    return done


def default_every(n):
    """Starts per chunk: a tenth of them, at least 32 (a chunk ends with its slowest
    fit, so small chunks leave cores idle)."""
    return max(32, math.ceil(n / 10))


def _resume(path, starts, fingerprint):
    """The fits a checkpoint at ``path`` holds for this run (None if there is none)."""
    if not path.exists():
        return None
    arrays, header = _saving.read(path, FORMAT)
    differs = [key for key in sorted(set(fingerprint) | set(header["fingerprint"])) if fingerprint.get(key) != header["fingerprint"].get(key)]
    saved = arrays["starts"]
    if saved.shape != starts.shape or saved.dtype != starts.dtype or not np.array_equal(saved, starts):
        differs.append("starts (n_starts, key or their sampling)")
    if differs:
        raise CheckpointMismatch(
            f"`checkpoint` {str(path)!r} belongs to another multi-start (it differs in: {', '.join(differs)}); "
            "delete it to start afresh, or pass another path."
        )
    return _saving.decode_result(header["results"], arrays)


def _commit(path, results, starts, fingerprint):
    arrays = {"starts": np.asarray(starts)}
    header = {"format": FORMAT, "version": _saving.VERSION, "fingerprint": fingerprint, "n_done": _size(results), "n_starts": int(starts.shape[0])}
    header["results"] = _saving.encode_result(results, "results", arrays)
    _saving.write(path, arrays, header)


def _size(results):
    return int(np.shape(results.cost)[0])


def _concatenate(a, b):
    return jax.tree_util.tree_map(lambda x, y: np.concatenate([x, y]) if np.ndim(x) > 0 else x, a, b)


def _bar(progress, total, initial):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        raise ImportError("progress=True needs tqdm: pip install 'fitfleet[progress]' (or pip install tqdm).") from e
    return tqdm(total=total, initial=initial, unit="start", desc="multi-start")
