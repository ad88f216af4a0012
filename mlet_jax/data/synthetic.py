"""Seeded synthetic CTR data with power-law id frequencies: the default dataset.

Ids of field ``f`` are drawn with ``P(rank r) ~ r^(-s_f)`` (Zipf, truncated at the vocabulary size) and a seeded
permutation maps frequency rank to id, so id 0 is not special. Labels come from a hidden ground-truth model::

    logit = b + a1 * sum_f w_f[id_f]                                   (first order)
              + a2 * sum_{f<g} beta_fg <v_f[id_f], v_g[id_g]>          (field interactions, rank-r latents)
              + a3 * (dense @ c + tanh(dense @ C) @ e)                  (dense effects)
    label ~ Bernoulli(sigmoid(logit))

Each component is rescaled to its share of the logit variance and ``b`` is solved for the requested mean CTR. Every
id carries its own effect, so an id seen a handful of times is genuinely hard to learn, and embedding quality (not the
MLPs) decides the AUC. The per-id latents live in ``latent_dim`` dimensions, so small ``d`` is a real bottleneck.

Defaults (``make_synthetic()``): 8 fields with vocabularies 8 .. 100k (273k ids), Zipf exponent 1.1, 4 dense
features, 300k training / 60k validation / 60k test rows, latent rank 8, mean CTR 0.25, logit std 2. One DLRM epoch
on it takes seconds on a laptop CPU, and it is where the demo measures MLET against single-layer embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlet_jax.data.base import Dataset, Schema, Split

DEFAULT_VOCAB = (8, 100, 1_000, 5_000, 10_000, 30_000, 60_000, 100_000)


def zipf_cdf(vocab: int, exponent: float) -> np.ndarray:
    """CDF over ranks ``1..vocab`` of the truncated Zipf law ``P(r) ~ r^(-exponent)``."""
    p = np.arange(1, vocab + 1, dtype=np.float64) ** (-float(exponent))
    c = np.cumsum(p)
    return c / c[-1]


def make_synthetic(
    seed: int = 0,
    *,
    n_train: int = 300_000,
    n_valid: int = 60_000,
    n_test: int = 60_000,
    vocab_sizes: Sequence[int] = DEFAULT_VOCAB,
    zipf_exponent: float | Sequence[float] = 1.1,
    num_dense: int = 4,
    latent_dim: int = 8,
    ctr: float = 0.25,
    logit_std: float = 2.0,
    shares: tuple[float, float, float] = (0.3, 0.55, 0.15),
) -> Dataset:
    """Generate a synthetic CTR dataset (see the module docstring for the model).

    Args:
        seed: fixes the hidden model and the samples; the same seed gives identical arrays.
        n_train, n_valid, n_test: rows per split (the splits are independent draws from one distribution).
        vocab_sizes: ids per categorical field.
        zipf_exponent: one exponent for all fields or one per field (> 0).
        num_dense: dense features.
        latent_dim: rank of the per-id latent vectors of the interaction term.
        ctr: target mean click-through rate.
        logit_std: standard deviation of the non-bias part of the true logit.
        shares: variance shares of the first-order, interaction and dense components.
    Returns:
        A :class:`Dataset`; ``meta`` holds the generator settings and the oracle's test AUC.
    """
    vocab = np.asarray(vocab_sizes, np.int64)
    n_fields = len(vocab)
    expo = np.broadcast_to(np.asarray(zipf_exponent, np.float64), (n_fields,))
    if n_fields < 1 or (vocab < 1).any():
        raise ValueError(f"vocab_sizes must be a non-empty list of sizes >= 1, got {tuple(vocab_sizes)}")
    if (expo <= 0).any():
        raise ValueError(f"zipf_exponent must be > 0, got {zipf_exponent}")
    if min(n_train, n_test) < 1 or n_valid < 0:
        raise ValueError("n_train and n_test must be >= 1 and n_valid >= 0")
    if not 0 < ctr < 1:
        raise ValueError(f"ctr must be in (0, 1), got {ctr}")
    if len(shares) != 3 or min(shares) < 0 or sum(shares) <= 0:
        raise ValueError(f"shares must be three non-negative numbers, got {shares}")

    rng = np.random.default_rng(seed)
    perms = [rng.permutation(int(v)).astype(np.int32) for v in vocab]
    cdfs = [zipf_cdf(int(v), s) for v, s in zip(vocab, expo, strict=True)]
    w = [rng.standard_normal(int(v)) for v in vocab]
    lat = [rng.standard_normal((int(v), latent_dim)) / np.sqrt(latent_dim) for v in vocab]
    field_w = rng.uniform(0.2, 1.0, n_fields)
    beta = np.triu(rng.uniform(0.0, 1.0, (n_fields, n_fields)), k=1)
    c = rng.standard_normal(num_dense)
    cmat = rng.standard_normal((num_dense, 4)) / np.sqrt(max(num_dense, 1))
    e = rng.standard_normal(4)

    n = n_train + n_valid + n_test
    ids = np.empty((n, n_fields), np.int32)
    for f in range(n_fields):
        r = np.searchsorted(cdfs[f], rng.random(n), side="right")
        ids[:, f] = perms[f][np.minimum(r, vocab[f] - 1)]
    dense = rng.standard_normal((n, num_dense)).astype(np.float32)

    first = sum(field_w[f] * w[f][ids[:, f]] for f in range(n_fields))
    vec = [lat[f][ids[:, f]] for f in range(n_fields)]
    second = np.zeros(n)
    for f in range(n_fields):
        for g in range(f + 1, n_fields):
            if beta[f, g]:
                second += beta[f, g] * np.einsum("nr,nr->n", vec[f], vec[g])
    dense_eff = dense @ c + np.tanh(dense @ cmat) @ e if num_dense else np.zeros(n)
    logit = np.zeros(n)
    for comp, share in zip((first, second, dense_eff), shares, strict=True):
        sd = comp.std()
        if share and sd > 0:
            logit += comp / sd * np.sqrt(share / sum(shares))
    logit *= logit_std
    bias = _solve_bias(logit, ctr)
    prob = 1.0 / (1.0 + np.exp(-(logit + bias)))
    label = (rng.random(n) < prob).astype(np.float32)

    schema = Schema(field_names=tuple(f"C{f + 1}" for f in range(n_fields)), vocab_sizes=tuple(int(v) for v in vocab),
                    dense_names=tuple(f"I{j + 1}" for j in range(num_dense)))
    cut1, cut2 = n_train, n_train + n_valid

    def split(lo, hi):
        return Split(dense=dense[lo:hi], ids=ids[lo:hi], label=label[lo:hi])

    test_prob = prob[cut2:]
    meta = {"generator": "synthetic", "seed": seed, "n_train": n_train, "n_valid": n_valid, "n_test": n_test,
            "vocab_sizes": [int(v) for v in vocab], "zipf_exponent": [float(x) for x in expo],
            "num_dense": num_dense, "latent_dim": latent_dim, "ctr": ctr, "logit_std": logit_std,
            "shares": list(shares), "test_prob": test_prob.astype(np.float32)}
    return Dataset(schema=schema, train=split(0, cut1), valid=split(cut1, cut2) if n_valid else None,
                   test=split(cut2, n), name="synthetic", meta=meta)


def _solve_bias(logit: np.ndarray, ctr: float) -> float:
    """Bias ``b`` with ``mean(sigmoid(logit + b)) = ctr`` (bisection; the mean is monotone in ``b``)."""
    lo, hi = -50.0, 50.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(logit + mid)))) < ctr:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
