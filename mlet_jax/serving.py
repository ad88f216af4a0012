"""A served model without model code: one ``jax.export`` artifact, loaded as ``predict(dense, ids) -> probabilities``.

:func:`export` multiplies MLET factors out and drops device padding (:func:`mlet_jax.models.collapse_model`), traces
the collapsed model's ``sigmoid(logits)`` with a symbolic batch dimension and writes ONE file (an uncompressed
``.npz``-style zip that ``numpy`` reads without pickle):

* ``__serving__``: a JSON manifest: the format tag :data:`FORMAT`, the schema (field names, vocabulary sizes, slots
  and pooling, dense feature names), the per-field row offsets of the fused tables, the OOV policy
  (:mod:`mlet_jax.oov`), the parameter names and shapes, the model's class and settings;
* ``__exported__``: the serialized :class:`jax.export.Exported` (StableHLO, batch dimension symbolic; the
  parameters are its first argument, so the program stays small however large the tables are);
* ``param_<i>``: the collapsed parameters, in the manifest's order.

:func:`load` reads it back with numpy and ``jax.export`` only: it imports neither flax nor :mod:`mlet_jax.models`,
so a serving process needs no model code. Its ``predict`` checks every input before running (shapes, dtypes,
non-finite dense values, ids outside their field's vocabulary under the ``"error"`` policy) and raises a
``ValueError`` naming the argument; inside the exported program the policy clips (``"error"``) or maps (``"row"``)
out-of-range ids, so a caller of the raw program can never read another field's row either.

The older ``.npz`` export of the collapsed parameters plus a JSON config (:func:`export_inference`,
:func:`load_inference`), which needs this library's model code to run, lives here too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mlet_jax import oov as oov_lib
from mlet_jax.io import check_file_target

FORMAT = "mlet_jax.serving/1"
EXPORT_FORMAT = "mlet_jax.inference/1"
_MANIFEST = "__serving__"
_PROGRAM = "__exported__"
PLATFORMS = ("cpu", "cuda", "tpu")


# -- the served artifact ------------------------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest of a serving artifact at ``path``, or ``None`` when the file is not one (any format version)."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            if f"{_MANIFEST}.npy" not in z.namelist():
                return None
            with z.open(f"{_MANIFEST}.npy") as f:
                cfg = json.loads(str(np.lib.format.read_array(f, allow_pickle=False)))
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    if not isinstance(cfg, dict) or not str(cfg.get("format", "")).startswith("mlet_jax.serving/"):
        return None
    return cfg


def check_export_path(path: str | os.PathLike) -> Path:
    """``path`` if :func:`export` may write there, else ``ValueError`` naming it: not a folder, its folder exists and
    is writable, and the file is missing or one of our artifacts (never another file)."""
    path = check_file_target(path, "export path")
    if path.exists() and read_manifest(path) is None:
        raise ValueError(f"export path {str(path)!r} exists and is not an mlet_jax serving artifact; refusing to "
                         "overwrite it (remove it or choose another name)")
    return path


def _schema_names(schema, n_fields: int, n_dense: int) -> tuple[list[str], list[str]]:
    if schema is None:
        return [f"C{i + 1}" for i in range(n_fields)], [f"I{i + 1}" for i in range(n_dense)]
    fields, dense = list(schema.field_names), list(schema.dense_names)
    if len(fields) != n_fields or len(dense) != n_dense:
        raise ValueError(f"schema has {len(fields)} fields and {len(dense)} dense features, the model "
                         f"{n_fields} and {n_dense}")
    return fields, dense


def export(model, params, path: str | os.PathLike, *, schema=None,
           platforms: tuple[str, ...] | None = PLATFORMS) -> Path:
    """Write ``model`` with ``params`` as one serving artifact at ``path`` and return the path.

    Args:
        model: a CTR model (:func:`mlet_jax.models.build_model`), MLET or single-layer, padded or not.
        params: its parameters (an MLET table and its projection are multiplied out first).
        path: the file to write; an existing file is replaced only if it is a serving artifact itself.
        schema: the dataset's :class:`mlet_jax.data.Schema`, for field and dense feature names (default
            ``C1..``, ``I1..``); its sizes must match the model's.
        platforms: the platforms the program is lowered for (``None``: this process's backend only).
    """
    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    # the model code only where a model is exported: load() must run without flax and mlet_jax.models
    from mlet_jax.models import collapse_model

    path = check_export_path(path)
    cmodel, cparams = collapse_model(model, params)
    stage = cmodel.embedding_stage()
    vocab, slots = tuple(int(v) for v in stage.vocab_sizes), tuple(stage.slots or (1,) * len(stage.vocab_sizes))
    num_dense = int(cmodel.num_dense)
    field_names, dense_names = _schema_names(schema, len(vocab), num_dense)
    if schema is not None and (tuple(schema.vocab_sizes) != vocab or tuple(schema.slots) != slots):
        raise ValueError(f"schema vocab_sizes {schema.vocab_sizes} / slots {schema.slots} differ from the model's "
                         f"{vocab} / {slots}")
    flat = traverse_util.flatten_dict(dict(cparams))
    names = sorted(flat)
    arrays = [np.asarray(flat[k]) for k in names]

    def probabilities(param_list, dense_BxM, ids_BxS):
        p = traverse_util.unflatten_dict(dict(zip(names, param_list, strict=True)))
        return jax.nn.sigmoid(cmodel.apply({"params": p}, dense_BxM, ids_BxS))

    (b,) = jax.export.symbolic_shape("batch")
    specs = ([jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays],
             jax.ShapeDtypeStruct((b, num_dense), jnp.float32), jax.ShapeDtypeStruct((b, sum(slots)), jnp.int32))
    exported = jax.export.export(jax.jit(probabilities), platforms=platforms)(*specs)
    sizes = stage.table_sizes
    manifest = {
        "format": FORMAT,
        "fields": [{"name": n, "vocab_size": v, "slots": s, "offset": int(o), "rows": int(r)}
                   for n, v, s, o, r in zip(field_names, vocab, slots,
                                            np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes, strict=True)],
        "pooling": stage.pooling,
        "dense_names": dense_names,
        "num_dense": num_dense,
        "oov": stage.spec.oov,
        "inputs": {"dense": ["batch", num_dense, "float32"], "ids": ["batch", sum(slots), "int32"]},
        "output": "probability of a click, sigmoid(logits), shape [batch]",
        "params": [{"name": "/".join(k), "shape": list(a.shape), "dtype": a.dtype.name}
                   for k, a in zip(names, arrays, strict=True)],
        "platforms": list(exported.platforms),
        "model": model_config(cmodel),
        "jax_version": jax.__version__,
    }
    entries = {_MANIFEST: np.array(json.dumps(manifest)),
               _PROGRAM: np.frombuffer(bytes(exported.serialize()), np.uint8)}
    entries.update({f"param_{i}": a for i, a in enumerate(arrays)})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **entries)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


class ServedModel:
    """``predict(dense, ids) -> probabilities`` of a loaded artifact (:func:`load`); calling it is ``predict``.

    Attributes:
        manifest: the artifact's JSON manifest (schema, offsets, OOV policy, parameters, model settings).
        exported: the :class:`jax.export.Exported` program.
    """

    def __init__(self, manifest: dict, exported, params: list, path: Path):
        import jax

        self.manifest, self.exported, self.path = manifest, exported, path
        self._params = [jax.device_put(p) for p in params]
        self._call = jax.jit(exported.call)
        fields = manifest["fields"]
        self.vocab_sizes = tuple(f["vocab_size"] for f in fields)
        self.slots = tuple(f["slots"] for f in fields)
        self.field_names = tuple(f["name"] for f in fields)
        self.num_dense = int(manifest["num_dense"])
        self.oov = manifest["oov"]

    def predict(self, dense, ids) -> np.ndarray:
        """Click probabilities ``[B]`` (numpy) for ``dense [B, num_dense]`` (real numbers) and ``ids [B, S]``.

        Raises ``ValueError`` naming the argument for a wrong shape or dtype, a NaN or infinite dense value, or
        (policy ``"error"``) an id outside its field's vocabulary.
        """
        dense = np.asarray(dense)
        if dense.ndim != 2 or dense.shape[1] != self.num_dense:
            raise ValueError(f"dense must have shape [batch, {self.num_dense}], got {dense.shape}")
        if dense.dtype == np.bool_ or not (np.issubdtype(dense.dtype, np.floating)
                                           or np.issubdtype(dense.dtype, np.integer)):
            raise ValueError(f"dense must hold real numbers, got dtype {dense.dtype}")
        dense = dense.astype(np.float32, copy=False)
        if not np.isfinite(dense).all():
            r, c = (int(x) for x in np.argwhere(~np.isfinite(dense))[0])
            raise ValueError(f"dense: feature {c} ({self.manifest['dense_names'][c]!r}) is {dense[r, c]} in row {r}; "
                             "every dense value must be finite (impute missing values the way training did)")
        ids = oov_lib.check_ids(ids, self.vocab_sizes, self.slots, self.oov, self.field_names, what="ids")
        if ids.shape[0] != dense.shape[0]:
            raise ValueError(f"dense has {dense.shape[0]} rows but ids {ids.shape[0]}")
        if ids.shape[0] == 0:
            return np.zeros((0,), np.float32)
        return np.asarray(self._call(self._params, dense, ids))

    __call__ = predict

    def __repr__(self) -> str:
        return (f"ServedModel({str(self.path)!r}, {len(self.vocab_sizes)} fields, {self.num_dense} dense, "
                f"oov={self.oov!r})")


def load(path: str | os.PathLike) -> ServedModel:
    """The served model of an artifact written by :func:`export` (numpy and ``jax.export`` only; no model code)."""
    import jax

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"serving artifact {str(path)!r} does not exist")
    manifest = read_manifest(path)
    if manifest is None:
        raise ValueError(f"{str(path)!r} is not an mlet_jax serving artifact (no {_MANIFEST!r} manifest)")
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r}: format {manifest.get('format')!r}, this version reads {FORMAT!r}")
    with np.load(path, allow_pickle=False) as z:
        blob = z[_PROGRAM].tobytes()
        params = [z[f"param_{i}"] for i in range(len(manifest["params"]))]
    for p, want in zip(params, manifest["params"], strict=True):
        if list(p.shape) != want["shape"] or p.dtype.name != want["dtype"]:
            raise ValueError(f"{str(path)!r}: parameter {want['name']} is {p.shape} {p.dtype}, the manifest says "
                             f"{tuple(want['shape'])} {want['dtype']} (a damaged artifact)")
    return ServedModel(manifest, jax.export.deserialize(bytearray(blob)), params, path)


# -- the parameter export that needs the model code (.npz + JSON config) ------------------------------------------


def _jsonable(v):
    from mlet_jax.embeddings import EmbeddingSpec  # imports flax: not at module top (load() runs without it)

    if isinstance(v, EmbeddingSpec):
        return {"__embedding_spec__": dataclasses.asdict(v)}
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    try:
        return {"__dtype__": np.dtype(v).name}
    except TypeError as e:
        raise TypeError(f"cannot export model setting {v!r} of type {type(v).__name__}") from e


def _from_jsonable(v):
    if isinstance(v, dict) and "__embedding_spec__" in v:
        from mlet_jax.embeddings import EmbeddingSpec  # imports flax: not at module top (load() runs without it)

        return EmbeddingSpec(**v["__embedding_spec__"])
    if isinstance(v, dict) and "__dtype__" in v:
        import jax.numpy as jnp

        return jnp.dtype(v["__dtype__"])
    if isinstance(v, list):
        return tuple(_from_jsonable(x) for x in v)
    return v


def model_config(model) -> dict:
    """A JSON-able description of a Flax model built by :func:`mlet_jax.models.build_model`."""
    fields = {f.name: _jsonable(getattr(model, f.name)) for f in dataclasses.fields(model)
              if f.name not in ("parent", "name")}
    return {"format": EXPORT_FORMAT, "model": type(model).__name__, "settings": fields}


def export_inference(path: str | os.PathLike, model, params) -> Path:
    """Write the collapsed (single-layer) inference model to ``path`` (``.npz``) and return the path.

    MLET tables are multiplied out first, so the file holds one ``[n_total, d]`` table per embedding, exactly what a
    single-layer model of the same ``d`` serves. The write goes to a temporary name that is renamed when complete.
    Every parameter is a float array named by its path and ``__config__`` a JSON string (model class, settings,
    per-field row offsets, format version); :func:`load_inference` rebuilds the Flax model from it. For serving
    without the model code use :func:`export`.
    """
    from flax import traverse_util

    from mlet_jax.models import collapse_model  # this export needs the model code anyway; load() must not

    cmodel, cparams = collapse_model(model, params)
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(dict(cparams)).items()}
    cfg = model_config(cmodel)
    vocab = getattr(cmodel, "vocab_sizes", None)
    if vocab is not None:
        sizes = np.asarray(cmodel.embedding_stage().table_sizes, np.int64)
        cfg["field_offsets"] = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
    cfg["arrays"] = {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in flat.items()}
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"export path must end in .npz, got {path}")
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, __config__=np.array(json.dumps(cfg)), **flat)
    os.replace(tmp, path)
    return path


def load_inference(path: str | os.PathLike) -> tuple[Any, dict, dict]:
    """``(model, params, config)`` from a file written by :func:`export_inference`."""
    import jax.numpy as jnp
    from flax import traverse_util

    from mlet_jax.models import MODELS  # rebuilding the Flax model needs the model code; load() must not

    with np.load(path, allow_pickle=False) as z:
        if "__config__" not in z:
            raise ValueError(f"{path}: not an mlet_jax inference export (no __config__ entry)")
        cfg = json.loads(str(z["__config__"]))
        arrays = {k: z[k] for k in z.files if k != "__config__"}
    if cfg.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}: format {cfg.get('format')!r}, expected {EXPORT_FORMAT!r}")
    name = cfg["model"]
    cls = next((c for c in MODELS.values() if c.__name__ == name), None)
    if cls is None:
        raise ValueError(f"{path}: unknown model class {name!r}")
    model = cls(**{k: _from_jsonable(v) for k, v in cfg["settings"].items()})
    params = traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v) for k, v in arrays.items()})
    return model, params, cfg
