"""Naive float64 references for structured importance, written from the papers with explicit loops."""

from __future__ import annotations

import math

import torch


def ref_attention_scores(q, k, v, o, n_heads, n_kv, d, element):
    """LLM-Pruner groups: a query head owns its q rows and o columns; a KV group its k/v rows + its heads.

    ``element(x)`` maps a weight (float) to its score. Returns ``(heads, groups)`` as lists of floats.
    Weights are ``[out, in]`` float64.
    """
    heads = []
    for h in range(n_heads):
        s = 0.0
        for r in range(h * d, (h + 1) * d):
            for c in range(q.shape[1]):
                s += element(q, r, c)
            for i in range(o.shape[0]):
                s += element(o, i, r)
        heads.append(s)
    per_group = n_heads // n_kv
    groups = []
    for g in range(n_kv):
        s = sum(heads[g * per_group : (g + 1) * per_group])
        for r in range(g * d, (g + 1) * d):
            for c in range(k.shape[1]):
                s += element(k, r, c) + element(v, r, c)
        groups.append(s)
    return heads, groups


def ref_ffn_scores(gate, up, down, element):
    """Neuron ``j``: row ``j`` of gate and up, column ``j`` of down."""
    out = []
    for j in range(up.shape[0]):
        s = 0.0
        for c in range(up.shape[1]):
            s += element(gate, j, c) + element(up, j, c)
        for i in range(down.shape[0]):
            s += element(down, i, j)
        out.append(s)
    return out


def ref_rms_groups(rows, width, n_units):
    """Root mean square over tokens of each unit's activations (``rows``: ``[tokens, n_units * width]``)."""
    out = []
    for u in range(n_units):
        total = 0.0
        for t in range(rows.shape[0]):
            for c in range(u * width, (u + 1) * width):
                total += float(rows[t, c]) ** 2
        out.append(math.sqrt(total / rows.shape[0]))
    return out


def ref_block_influence(x_in, x_out):
    """ShortGPT eq. 1: ``1 - mean_t cos(x_in[t], x_out[t])`` over ``[tokens, D]`` rows."""
    total = 0.0
    for t in range(x_in.shape[0]):
        a, b = x_in[t].double(), x_out[t].double()
        total += float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)))
    return 1.0 - total / x_in.shape[0]


def l1_element(w, r, c):
    return abs(float(w[r, c]))


def l2_element(w, r, c):
    """Squares; the group score is the square root of their sum."""
    return float(w[r, c]) ** 2


def taylor_element(grads):
    """``|w * dL/dw|``; ``grads`` maps ``id(weight tensor)`` to its gradient."""
    return lambda w, r, c: abs(float(w.detach()[r, c]) * float(grads[id(w)][r, c]))


def as_float64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double().clone()
