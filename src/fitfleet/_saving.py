"""A :class:`MultiStartResult` in one file and back: ``ms.save(path)``,
``MultiStartResult.load(path)``.

The file is a numpy ``.npz`` archive: every array of the result under a dotted name
(``results.cost``, ``results.params.0``, ``starts.0``, ``optima.index``, ...) and one
JSON header (``__header__``) with everything else: the parameters' pytree structure
(arrays, and dicts, lists and tuples of them), the Result's static fields (names,
bounds, ``log_scale``, loss), the multi-start's numbers (``p_star``, ``threshold``,
``rtol``, ...) and any JSON-able ``info`` the caller adds (``load_info`` reads it
back).  Loading needs neither the model nor pickle (``allow_pickle=False``), compiles
nothing, and gives numpy arrays with the dtypes saved (float64 stays float64 whatever
the ``enable_x64`` setting).  ``best`` and the optima's parameters are rebuilt from
``results`` (they are rows of it).

Writes are atomic: the archive goes to a temporary file in the same folder, is synced,
and replaces ``path`` by ``os.replace``, so a reader (or a run killed mid-write) sees
the old file or the new one, never a torn one.  ``write`` and ``read`` serve other
files of this shape (multi-start checkpoints).
"""

import json
import os
from pathlib import Path

import jax
import numpy as np

from ._result import History, Result

FORMAT = "fitfleet.MultiStartResult"
VERSION = 1
_RESULT_ARRAYS = ("cost", "residual", "jac", "grad", "status", "n_steps", "n_fev", "n_jev")


def save(ms, path, info=None):
    """Write ``ms`` (and the JSON-able dict ``info``) to ``path`` (module docstring)."""
    arrays, header = {}, {"format": FORMAT, "version": VERSION}
    header["results"] = encode_result(ms.results, "results", arrays)
    header["starts"] = _encode(ms.starts, "starts", arrays)
    for name, values in (("index", [o.index for o in ms.optima]), ("cost", [o.cost for o in ms.optima]),
                         ("n_starts", [o.n_starts for o in ms.optima]), ("fraction", [o.fraction for o in ms.optima])):  # fmt: skip
        arrays[f"optima.{name}"] = np.asarray(values, np.int64 if name in ("index", "n_starts") else np.float64)
    header["multistart"] = {
        "p_star": float(ms.p_star), "n_starts": int(ms.n_starts), "threshold": _float(ms.threshold),
        "n_success": None if ms.n_success is None else int(ms.n_success), "rtol": float(ms.rtol),
        "threshold_rule": ms.threshold_rule,
    }  # fmt: skip
    header["info"] = _check_info(info)
    write(path, arrays, header)


def load(path):
    """The :class:`MultiStartResult` saved at ``path``."""
    from ._multistart import MultiStartResult, Optimum

    arrays, header = read(path, FORMAT)
    results = decode_result(header["results"], arrays)
    starts = _decode(header["starts"], arrays)
    leaves, treedef = jax.tree_util.tree_flatten(results.params)
    optima = [
        Optimum(treedef.unflatten([leaf[int(i)] for leaf in leaves]), float(c), int(k), float(f), int(i))
        for i, c, k, f in zip(*(arrays[f"optima.{name}"] for name in ("index", "cost", "n_starts", "fraction")))
    ]
    best = jax.tree_util.tree_map(lambda a: a[0] if np.ndim(a) > 0 else a, results)
    m = header["multistart"]
    return MultiStartResult(results, starts, best, optima, m["p_star"], m["n_starts"], m["threshold"], m["n_success"], m["rtol"], m["threshold_rule"])


def load_info(path):
    """The ``info`` dict saved with the result at ``path`` (``{}`` if none)."""
    return read(path, FORMAT)[1]["info"] or {}


# ---------------------------------------------------------------------------- files


def write(path, arrays, header):
    """``arrays`` and the JSON ``header`` to ``path``, atomically (module docstring)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"`path` {str(path)!r}: the folder {str(path.parent)!r} does not exist.")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, __header__=np.asarray(json.dumps(header)), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read(path, expected):
    """``(arrays, header)`` of a file ``write`` wrote, checking its format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`path`: no file {str(path)!r}.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        header = json.loads(str(arrays.pop("__header__")))
    except (ValueError, KeyError, OSError) as e:
        raise ValueError(f"{str(path)!r} is not a file that fitfleet wrote ({e}).") from e
    if header.get("format") != expected:
        raise ValueError(f"{str(path)!r} holds {header.get('format')!r}, not {expected!r}.")
    if header.get("version", 0) > VERSION:
        raise ValueError(f"{str(path)!r} was written by a newer fitfleet (format version {header['version']}); upgrade fitfleet to read it.")
    return arrays, header


# ---------------------------------------------------------------------------- encoding


def encode_result(res, prefix, arrays):
    """The header entry of a :class:`Result`; its arrays go into ``arrays``."""
    entry = {name: _encode(getattr(res, name), f"{prefix}.{name}", arrays) for name in ("params", *_RESULT_ARRAYS, "f_scale", "sigma")}
    entry["history"] = None if res.history is None else _encode(_history_fields(res.history), f"{prefix}.history", arrays)
    entry["static"] = {
        "loss": res.loss,
        "names": None if res.names is None else list(res.names),
        "order": None if res.order is None else [int(i) for i in res.order],
        "bounds": None if res.bounds is None else [[float(v) for v in np.ravel(b)] for b in res.bounds],
        "log_scale": None if res.log_scale is None else [bool(v) for v in np.ravel(res.log_scale)],
    }
    return entry


def decode_result(entry, arrays):
    fields = {name: _decode(entry[name], arrays) for name in ("params", *_RESULT_ARRAYS, "f_scale", "sigma")}
    history = None if entry["history"] is None else History(*_decode(entry["history"], arrays))
    s = entry["static"]
    return Result(
        **fields,
        history=history,
        loss=s["loss"],
        names=None if s["names"] is None else tuple(s["names"]),
        order=None if s["order"] is None else tuple(s["order"]),
        bounds=None if s["bounds"] is None else tuple(tuple(b) for b in s["bounds"]),
        log_scale=None if s["log_scale"] is None else tuple(s["log_scale"]),
    )


def _encode(tree, prefix, arrays):
    """A JSON description of a pytree of arrays (dicts with string keys, lists, tuples,
    None); its leaves go into ``arrays`` as ``prefix.<k>``."""
    if tree is None:
        return {"none": True}
    if isinstance(tree, dict):
        if not all(isinstance(k, str) for k in tree):
            raise TypeError(f"save: a dict in the parameters has keys that are not strings ({list(tree)!r}); only string keys are stored.")
        return {"dict": [[k, _encode(v, f"{prefix}.{k}", arrays)] for k, v in tree.items()]}
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return {"list" if isinstance(tree, list) else "tuple": [_encode(v, f"{prefix}.{i}", arrays) for i, v in enumerate(tree)]}
    if isinstance(tree, (np.ndarray, np.generic, jax.Array, float, int, bool)):
        key = f"{prefix}.{len(arrays)}"
        arrays[key] = np.asarray(tree)
        return {"leaf": key}
    raise TypeError(f"save stores parameters that are arrays, or dicts, lists and tuples of arrays; got a {type(tree).__name__}.")


def _decode(entry, arrays):
    if "none" in entry:
        return None
    if "dict" in entry:
        return {k: _decode(v, arrays) for k, v in entry["dict"]}
    if "list" in entry:
        return [_decode(v, arrays) for v in entry["list"]]
    if "tuple" in entry:
        return tuple(_decode(v, arrays) for v in entry["tuple"])
    return arrays[entry["leaf"]]


def _history_fields(history):
    return (history.params, history.cost, history.damping, history.length)


def _float(value):
    return None if value is None else float(value)


def _check_info(info):
    if info is None:
        return None
    if not isinstance(info, dict):
        raise TypeError(f"`info` must be a dict of JSON-able values; got {type(info).__name__}.")
    try:
        json.dumps(info)
    except TypeError as e:
        raise TypeError(f"`info` must hold JSON-able values (str, numbers, lists, dicts): {e}") from e
    return info
