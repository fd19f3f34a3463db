#!/usr/bin/env python3
"""Writes tests/data/mpo/mpo_reference.json: small matrices, their TT-SVD spectra, reconstructions and
symmetric-gauge cores, computed independently of pemoe with NumPy.

The algorithm is the reference Matrix2MPO of the MPOE/MPOP code (lpyhdzx/MPOBERT-code,
compress_tools_v2/Matrix2MPO_beta.py) as described in /work/shared/specs/mpoe.md §1.3:
  1. reshape W (C order) to (i_1..i_n, j_1..j_n), permute to (i_1, j_1, ..., i_n, j_n);
  2. sequential economy SVDs (truncating during the sweep when max_bond is given, as TensorLy does);
  3. the symmetric sqrt(Lambda) gauge via the left/right sweeps L_k, R_k and p_k = R_k V^T Lambda^-1/2,
     q_k = Lambda^-1/2 U^T L_k.
Singular vectors are defined up to sign, so the test compares |core| element-wise (invariant under the
sign flips D_k core_k D_{k+1}), the spectra, and the reconstructions.

Run:  python3 make_fixtures.py   (needs numpy; output is deterministic for a given seed)
"""
import json
import os

import numpy as np


def interleave(W, I, J):
    n = len(I)
    T = W.reshape(list(I) + list(J))
    perm = [a for k in range(n) for a in (k, n + k)]
    return T.transpose(perm)


def tt_svd(W, I, J, max_bond=None):
    n = len(I)
    res = interleave(W, I, J)
    cores, spectra, d, err2 = [], [], 1, 0.0
    for k in range(n - 1):
        res = res.reshape(d * I[k] * J[k], -1)
        U, S, Vt = np.linalg.svd(res, full_matrices=False)
        spectra.append(S)
        r = len(S) if max_bond is None else min(len(S), max_bond)
        err2 += float((S[r:] ** 2).sum())
        cores.append(U[:, :r].reshape(d, I[k], J[k], r))
        res = S[:r, None] * Vt[:r]
        d = r
    cores.append(res.reshape(d, I[-1], J[-1], 1))
    return cores, spectra, np.sqrt(err2)


def symmetric_gauge(cores):
    n = len(cores)
    L, R = [None] * n, [None] * n
    _, S, Vt = np.linalg.svd(cores[0].reshape(-1, cores[0].shape[3]), full_matrices=False)
    L[1] = np.diag(S) @ Vt
    for k in range(1, n - 1):
        M = np.tensordot(L[k], cores[k], axes=(1, 0)).reshape(-1, cores[k].shape[3])
        _, S, Vt = np.linalg.svd(M, full_matrices=False)
        L[k + 1] = np.diag(S) @ Vt
    U, S, _ = np.linalg.svd(cores[n - 1].reshape(cores[n - 1].shape[0], -1), full_matrices=False)
    R[n - 1] = U @ np.diag(S)
    for k in range(n - 2, 0, -1):
        M = np.tensordot(cores[k], R[k + 1], axes=(3, 0)).reshape(cores[k].shape[0], -1)
        U, S, _ = np.linalg.svd(M, full_matrices=False)
        R[k] = U @ np.diag(S)
    p, q = [None] * (n + 1), [None] * (n + 1)
    for k in range(1, n):
        U, lam, V = np.linalg.svd(L[k] @ R[k])
        isq = np.diag(lam ** -0.5)
        p[k] = R[k] @ V.T @ isq
        q[k] = isq @ U.T @ L[k]
    out = []
    for k in range(n):
        c = cores[k]
        if k > 0:
            c = np.tensordot(q[k], c, axes=(1, 0))
        if k < n - 1:
            c = np.tensordot(c, p[k + 1], axes=(3, 0))
        out.append(c)
    return out


def reconstruct(cores, I, J):
    n = len(cores)
    t = cores[0]
    for c in cores[1:]:
        t = np.tensordot(t, c, axes=(t.ndim - 1, 0))
    t = t.reshape([a for k in range(n) for a in (I[k], J[k])])
    perm = [2 * k for k in range(n)] + [2 * k + 1 for k in range(n)]
    return t.transpose(perm).reshape(int(np.prod(I)), int(np.prod(J)))


def rounded(a):
    """15 significant digits: enough for the 1e-12 tolerances, half the size of repr()."""
    return [float(f"{x:.15g}") for x in np.asarray(a).ravel()]


def case(name, rng, I, J, max_bond=None, low_rank=None):
    rows, cols = int(np.prod(I)), int(np.prod(J))
    if low_rank:
        W = rng.standard_normal((rows, low_rank)) @ rng.standard_normal((low_rank, cols))
        W += 0.01 * rng.standard_normal((rows, cols))
    else:
        W = rng.standard_normal((rows, cols))
    cores, spectra, err = tt_svd(W, I, J, max_bond)
    rec = reconstruct(cores, I, J)
    out = {
        "name": name,
        "row_modes": I,
        "col_modes": J,
        "max_bond": max_bond,
        "W": rounded(W),
        "spectra": [rounded(s) for s in spectra],
        "bond_dims": [1] + [c.shape[3] for c in cores],
        "truncation_error": err,
    }
    if max_bond is None:
        sym = symmetric_gauge(cores)
        rec_sym = reconstruct(sym, I, J)
        assert np.allclose(rec_sym, W, atol=1e-10), name
        out["abs_symmetric_cores"] = [rounded(np.abs(c)) for c in sym]
    else:
        out["reconstruction"] = rounded(rec)
        assert abs(np.linalg.norm(rec - W) - err) < 1e-9 * max(1.0, err), name
    return out


def main():
    rng = np.random.default_rng(20221)
    cases = [
        case("n3_24x18", rng, [2, 3, 4], [3, 2, 3]),
        case("n5_32x24", rng, [2, 2, 2, 2, 2], [1, 2, 3, 2, 2]),
        case("n4_24x20_lowrank", rng, [2, 3, 2, 2], [1, 5, 2, 2], low_rank=3),
        case("n4_24x20_maxbond4", rng, [2, 3, 2, 2], [1, 5, 2, 2], max_bond=4),
        case("n5_32x24_maxbond3", rng, [2, 2, 2, 2, 2], [2, 2, 3, 2, 1], max_bond=3),
    ]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpo_reference.json")
    with open(path, "w") as f:
        json.dump({"generator": "tests/data/mpo/make_fixtures.py (NumPy " + np.__version__ + ")",
                   "cases": cases}, f, separators=(",", ":"))
    print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
