"""T steps of one LSTM layer, forward and backpropagation through time (NumPy backend).

The math is cell.py's, step for step; this file is where the speed tricks live. On small sizes a
step costs what its NumPy calls cost (~0.5-1 µs each, whatever the array size), so the loops are
written to make few calls:

* the cell's product is one: A_t = Z_t W1 with Z_t = [H_{t-1} | X_t | 1] and W1 = [W_h ; W_x ; b]
  (the bias through a column of ones). Z of every step is kept side by side, (T+1, N, H+D+1), so
  after the backward loop [dW_h ; dW_x ; db] = Zᵀ dA is one product, and dx = dA W_xᵀ another (a
  sum for db over T·N rows is 2x slower than riding in the product). Before the loop, the input
  part [X | 1] [W_x ; b] of all T steps is one product (hoisted) -- unless D is small next to H
  (4 (D + 1) <= H): then each step's product takes the whole row Z_t, K = H+D+1 instead of H, which
  costs less than the extra call `A += H_prev W_h` (D = 1, N = 32, H = 64: 11 vs 13 µs a step);
* every per-step array is preallocated and written in place (`out`): no temporaries; with `work`
  (the LSTM layer passes one per layer) the arrays of the cache and of the backward are kept from
  call to call, so large ones are not fresh pages every call, and so are the constant rows and the
  lists of per-step views the loops zip over (views of the kept arrays: building them cost ~0.5 µs a
  forward step, 5 % of a step at N = 1; with the constants, ~12 % of a 100-step call at N = 1, H = 64);
* the three sigmoids and the tanh of a step are one np.tanh call over the whole (N, 4H) block:
  sigmoid(a) = 0.5 * tanh(a / 2) + 0.5, so the i, f, o columns of W_x, W_h and b are pre-scaled by
  1/2 and the tanh output is mapped back with one multiply-add (SCALE, SHIFT below);
* backward: everything in a step's gradient that does not depend on dH or dC -- the gate
  derivatives times their partners, [σ'(A_i) C̃ | σ'(A_f) C_prev | (1 − C̃²) I | σ'(A_o) tanh C],
  written straight into the dA buffer, and P = O (1 − tanh² C) -- is computed for a chunk of steps
  at once, outside the step loop (a chunk is ~1 MiB: all of T for small sizes). The factors are
  written for whole contiguous rows where the math allows: σ(1 − σ) and 1 − C̃² are both
  gate (alpha − gate) + beta, and P = O − H tanh C (H = O tanh C is stored): 8 calls a chunk, 3 of
  them on strided gate blocks, where the direct transcription made 11, 9 strided (1.6x slower).
  In the loop, the step's multipliers are gathered in one row E = [dC | dC | dC | dH] (two copies)
  and one contiguous product finishes dA (a broadcast product on [i | f | g] and one on the strided
  o block cost 2x as much). (P lives in its own array: inside the dA rows it made one call fewer but
  the per-step product on strided rows cost 10-20 % more with two BLAS threads.)
* tried and measured slower (2-20 %): the whole loop feature-major, (4H, N) per step, which gives
  contiguous gate blocks and OpenBLAS's faster (4H×H)(H×N) shape, but then the weight products
  after the loop need the steps side by side, (4H, T·N): strided per-step rows or a transposing copy.

NumPy calls per time step (no mask): forward 10 (1 product + 9 ufuncs; 9 when folded); backward 8
(1 product + 5 ufuncs + 2 copies) plus 8 per chunk of steps. The plain version made 10 and 17, plus
gate_blocks calls (one forward, two backward) and ~10 array indexings per step; the loops now zip over
per-step views (kept between calls with `work`). A mask adds 2 calls per step each way.

Time-major: x (T, N, D), states (N, H). An optional mask (T, N) of booleans marks the real steps:
where it is False the step leaves (H, C) unchanged (the output repeats the previous H), and the
backward lets dH and dC pass straight through it.

sequence_forward(x, h0, c0, W_x, W_h, b, mask=None, fold=None, work=None) -> Y (T, N, H), h_T, c_T, cache
sequence_backward(dY, dh_T, dc_T, cache, work=None) -> dx, dh0, dc0, dW_x, dW_h, db
"""

from typing import NamedTuple, Optional

import numpy as np

from .cell import gate_blocks

CHUNK_BYTES = 1 << 20   # backward factors are computed this many bytes of [i|f|g|o|P] at a time (~ L2)


def _block_vector(H, dtype, sigmoid_value, tanh_value):
    """(4H,) vector holding sigmoid_value on the i, f, o blocks and tanh_value on the g block."""
    v = np.full(4 * H, sigmoid_value, dtype=dtype)
    v[2 * H:3 * H] = tanh_value
    return v


def _rows(v, N):
    """A (4H,) vector repeated as N contiguous rows (N, 4H): same-shape operands take NumPy's fastest
    loop (a broadcast (4H,) vector costs 2x per call)."""
    return np.ascontiguousarray(np.broadcast_to(v, (N, v.shape[0])))


def _empty(work, name, shape, dtype):
    """np.empty(shape, dtype), or work[name] if the last call left one of that shape (work: a dict or None)."""
    a = None if work is None else work.get(name)
    if a is None or a.shape != shape or a.dtype != dtype:
        a = np.empty(shape, dtype)
        if work is not None:
            work[name] = a
    return a


def _kept(work, name, key, make):
    """make(), or what work kept under name from a call with the same key (work: a dict or None).

    For what depends only on the shapes and on the work buffers: the constant (N, 4H) rows and the lists
    of per-step views the loops zip over (building a step's views costs ~0.05 µs each, 0.5 µs a forward
    step: ~5 % of a step at N = 1). Views are keyed by the ids of the buffers they view; a kept view
    holds its buffer alive, so a new buffer never gets an old buffer's id while the old views are kept.
    """
    if work is None:
        return make()
    kept = work.get(name)
    if kept is None or kept[0] != key:
        kept = work[name] = (key, make())
    return kept[1]


def _gate_vectors(H, dtype):
    """(4H,) vectors: SCALE = [1/2, 1/2, 1, 1/2] per gate block, SHIFT = [1/2, 1/2, 0, 1/2].

    gate = SCALE * tanh(SCALE * A) + SHIFT is sigmoid(A) on the i, f, o blocks and tanh(A) on g.
    """
    return _block_vector(H, dtype, 0.5, 1.0), _block_vector(H, dtype, 0.5, 0.0)


def _gate_rows(H, N, dtype):
    """SCALE (4H,), and SCALE and SHIFT repeated as (N, 4H) rows for the loop."""
    scale, shift = _gate_vectors(H, dtype)
    return scale, _rows(scale, N), _rows(shift, N)


class SequenceCache(NamedTuple):
    Z: np.ndarray                 # (T+1, N, H+D+1)  Z[t] = [H_t | X_t | 1]: H_0 .. H_T and the inputs
    W_x: np.ndarray               # (D, 4H)
    W_h: np.ndarray               # (H, 4H)
    Cs: np.ndarray                # (T+1, N, H)  C_0 .. C_T
    gates: np.ndarray             # (T, N, 4H)   [ I | F | C_tilde | O ] of every step
    tanh_C: np.ndarray            # (T, N, H)    tanh(C_t) of every step
    mask: Optional[np.ndarray]    # (T, N, 1) of 0/1 in the data dtype, or None


def folds_input(D, H):
    """sequence_forward's choice by size: with D small next to H, [X_t | 1] rides in each step's product
    (K = H+D+1 costs less than a second call); otherwise X W_x + b is one product before the loop."""
    return 4 * (D + 1) <= H


def sequence_forward(x, h0, c0, W_x, W_h, b, mask=None, fold=None, work=None):
    """x : (T, N, D), h0, c0 : (N, H), W_x : (D, 4H), W_h : (H, 4H), b : (4H,), mask : (T, N) bool or None.

    fold : whether [X_t | 1] rides in each step's product (True) or X W_x + b is one product before the
    loop (False); None picks by size (folds when 4 (D + 1) <= H). Either way the same math.
    work : None, or a dict the caller keeps between calls: the cache's arrays (and backward's) are then
    taken from it and left in it, so later calls reuse that memory instead of asking the OS for fresh
    pages (arrays over glibc's 32 MiB mmap limit are new pages every call: at N = 128, H = 512 that was
    ~300 MB of page faults a call). Pass it only when the previous call's cache and Y are no longer
    needed: they are overwritten.
    returns Y : (T, N, H) (Y[t] = H_{t+1}, a view of the cache), h_T : (N, H), c_T : (N, H), cache
    """
    T, N, D = x.shape
    H = W_h.shape[0]
    dtype = x.dtype
    scale, scale_rows, shift_rows = _kept(work, "gate_rows", (N, H, dtype), lambda: _gate_rows(H, N, dtype))
    # A_t = Z_t W1 with Z_t = [H_{t-1} | X_t | 1] (N, H+D+1) and W1 = [W_h ; W_x ; b] (H+D+1, 4H), scaled
    Z = _empty(work, "Z", (T + 1, N, H + D + 1), dtype)  # Z[t] = [H_t | X_t | 1]  (Z[T]: H_T, no input)
    Z[0, :, :H] = h0
    Z[:T, :, H:H + D] = x
    Z[T, :, H:H + D] = 0
    Z[:, :, H + D] = 1
    Hs = Z[:, :, :H]                                    # (T+1, N, H) view: H_0 .. H_T
    W1 = np.concatenate([W_h, W_x, b[None, :]]) * scale                 # (H+D+1, 4H)
    if fold is None:
        fold = folds_input(D, H)
    gates = _empty(work, "gates", (T, N, 4 * H), dtype)
    if not fold:                                        # hoisted input product, all T steps at once:
        np.dot(Z[:T].reshape(T * N, H + D + 1)[:, H:], W1[H:], out=gates.reshape(T * N, 4 * H))  # [X|1] [W_x;b]
    W_h1 = W1[:H]                                       # (H, 4H), scaled
    Cs = _empty(work, "Cs", (T + 1, N, H), dtype)
    Cs[0] = c0
    tanh_C = _empty(work, "tanh_C", (T, N, H), dtype)
    HW = _empty(work, "HW", (N, 4 * H), dtype)          # H_prev W_h of the current step
    IC = _empty(work, "IC", (N, H), dtype)
    m = None if mask is None else mask.reshape(T, N, 1).astype(dtype)
    keep = None if mask is None else ~mask.reshape(T, N, 1)
    dot, tanh, add, mul = np.dot, np.tanh, np.add, np.multiply   # in the loops, out is the last positional
    # argument: each call then costs ~0.23 µs before its work, against ~0.27 with out= and ~0.30 for a += b
    steps = _kept(work, "forward_steps", tuple(map(id, (Z, gates, Cs, tanh_C))), lambda: list(zip(   # per-step views
        gates, Z[:-1], Hs[:-1], Hs[1:], Cs[:-1], Cs[1:], tanh_C, *gate_blocks(gates))))   # ..., I, F, C̃, O
    for t, (a, z, h_prev, h, c_prev, c, tc, I, F, C_tilde, O) in enumerate(steps):
        if fold:                                        # A = [H_prev | X | 1] [W_h ; W_x ; b]  (scaled)
            dot(z, W1, a)
        else:                                           # A = (X W_x + b) + H_prev W_h  (scaled)
            dot(h_prev, W_h1, HW)
            add(a, HW, a)
        tanh(a, a)
        mul(a, scale_rows, a)                           # I, F, O = σ(A_i, A_f, A_o); C̃ = tanh(A_g)
        add(a, shift_rows, a)
        mul(F, c_prev, c)                               # C = F ⊙ C_prev + I ⊙ C̃
        mul(I, C_tilde, IC)
        add(c, IC, c)
        tanh(c, tc)                                     # H = O ⊙ tanh(C)
        mul(O, tc, h)
        if keep is not None:                            # masked rows keep (H, C) of the step before
            np.copyto(h, h_prev, where=keep[t])
            np.copyto(c, c_prev, where=keep[t])
    cache = SequenceCache(Z, W_x, W_h, Cs, gates, tanh_C, m)
    return Hs[1:], Hs[T].copy(), Cs[T].copy(), cache


def _backward_factors(q, P, gates, Hs, Cs, tanh_C, steps, alpha, beta, m=None, F_through=None):
    """Fill q[steps] (k, N, 4H) and P[steps] (k, N, H) with what each step's gradient needs besides dH, dC.

    Per step, in GATES order, and P:
        q = [ σ'(A_i) C̃ | σ'(A_f) C_prev | (1 − C̃²) I | σ'(A_o) tanh C ],   P = O (1 − tanh² C)
    so that the loop finishes dA with one product by E = [dC | dC | dC | dH].
    alpha, beta : (N, 4H), [1 | 1 | 0 | 1] and [0 | 0 | 1 | 0] per gate block.
    With a mask, masked rows are zeroed (their dA is 0) and F_through[steps] gets F where the step is
    real and 1 where it is masked (dC passes through a masked step).
    """
    k, N, H = tanh_C[steps].shape
    q, P = q[steps], P[steps]                           # (k, N, 4H), (k, N, H) views
    g = gates[steps]
    F, O = gate_blocks(g)[1::2]
    _, qF, _, qO = gate_blocks(q)
    tc = tanh_C[steps]
    # forward: I, F, O = σ(A)  ->  σ'(A) = σ(1 − σ);   forward: C̃ = tanh(A_g)  ->  tanh'(A_g) = 1 − C̃²
    # both are gate (alpha − gate) + beta: three calls over whole rows, none over a strided block
    np.subtract(alpha, g, out=q)
    q *= g
    q += beta
    # forward: C = F ⊙ C_prev + I ⊙ C̃  ->  dA_i = dC ⊙ C̃ σ'_i,  dA_f = dC ⊙ C_prev σ'_f,  dA_g = dC ⊙ I tanh'_g
    q4, g4 = q.reshape(k, N, 4, H), g.reshape(k, N, 4, H)
    q4[:, :, 0::2] *= g4[:, :, 2::-2]                   # blocks i, g times C̃, I: one call
    qF *= Cs[steps]
    # forward: H = O ⊙ tanh(C)  ->  dA_o = dH ⊙ tanh(C) σ'_o,  dC += dH ⊙ O (1 − tanh² C) = dH ⊙ (O − H tanh C)
    qO *= tc
    np.multiply(Hs[steps.start + 1:steps.stop + 1], tc, out=P)
    np.subtract(O, P, out=P)
    if m is not None:
        q *= m[steps]
        P *= m[steps]
        np.multiply(F, m[steps], out=F_through[steps])
        F_through[steps] += 1 - m[steps]


def _backward_steps(T, chunk, P, F_, dA):
    """The backward loop's chunks, last first: (steps, back, [(t, P_t, F_t, dA_t) for t = end-1 .. start])
    with steps = slice(start, end) and back the same steps reversed."""
    chunks = []
    for end in range(T, 0, -chunk):
        start = max(end - chunk, 0)
        back = slice(end - 1, start - 1 if start else None, -1)
        chunks.append((slice(start, end), back, list(zip(range(end - 1, start - 1, -1), P[back], F_[back], dA[back]))))
    return chunks


def sequence_backward(dY, dh_T, dc_T, cache, work=None):
    """BPTT. dY : (T, N, H) gradient on every output, dh_T, dc_T : (N, H) gradients on the final state.

    returns dx (T, N, D), dh0 (N, H), dc0 (N, H), dW_x (D, 4H), dW_h (H, 4H), db (4H,)
    work : as in sequence_forward (dW_x, dW_h and db are then views of a buffer the next call overwrites).
    """
    Z, W_x, W_h, Cs, gates, tanh_C, m = cache
    T, N, H = tanh_C.shape
    D = W_x.shape[0]
    Hs = Z[:, :, :H]                                    # (T+1, N, H) view: H_0 .. H_T
    dtype = gates.dtype
    W_hT = W_h.T if N == 1 else np.ascontiguousarray(W_h.T)   # (4H, H): copied for N > 1, where the product
    # with a transposed view is 1.1-1.5x slower; one row (a GEMV) reads either layout as fast (H = 64: the copy
    # costs 16 µs a call, 1.5 % of a 100-step call)
    dA = _empty(work, "dA", (T, N, 4 * H), dtype)       # every step's dA (first its factors), for the products
    P = _empty(work, "P", (T, N, H), dtype)             # O ⊙ (1 − tanh² C) of every step
    E = _empty(work, "E", (N, 4 * H), dtype)            # [dC | dC | dC | dH]: a step's multipliers, by block
    E_ifg, E_o = E.reshape(N, 4, H)[:, 0:3], E[:, 3 * H:]   # (N, 3, H) and (N, H) views
    dH = np.array(dh_T, dtype=dtype)                    # carried back through time
    dC = np.array(dc_T, dtype=dtype)
    dC_ = dC[:, None, :]                                # (N, 1, H) view that broadcasts over gate blocks
    F_ = gates[:, :, H:2 * H]                           # F of every step: dC_prev = dC ⊙ F
    if m is not None:
        F_ = _empty(work, "F", (T, N, H), dtype)        # F on real steps, 1 on masked ones
        keep = 1 - m                                    # (T, N, 1): 1 where dH, dC pass through
        dH_through = np.empty((N, H), dtype)
    alpha, beta = _kept(work, "factor_rows", (N, H, dtype), lambda: (
        _rows(_block_vector(H, dtype, 1, 0), N), _rows(_block_vector(H, dtype, 0, 1), N)))   # (N, 4H)
    chunk = max(1, CHUNK_BYTES // (N * 5 * H * dtype.itemsize))   # steps per chunk of dA and P
    chunks = _kept(work, "backward_steps", tuple(map(id, (dA, P, gates if m is None else F_))) + (chunk,),
                   lambda: _backward_steps(T, chunk, P, F_, dA))
    dot, add, mul = np.dot, np.add, np.multiply         # out positional in the loop (see sequence_forward)
    for steps, back, views in chunks:                   # chunks of steps, last first
        _backward_factors(dA, P, gates, Hs, Cs, tanh_C, steps, alpha, beta, m, F_)
        for (t, P_t, F, dA_t), dY_t in zip(views, dY[back]):   # steps end-1 .. start, per-step views
            add(dH, dY_t, dH)                           # dH_t = dY_t + dH coming back from t+1
            mul(P_t, dH, P_t)                           # dC_t = dC from t+1 + dH ⊙ O (1 − tanh² C)
            add(dC, P_t, dC)
            np.copyto(E_ifg, dC_)                       # E = [dC | dC | dC | dH]
            np.copyto(E_o, dH)
            mul(dA_t, E, dA_t)                          # dA = [dC C̃ σ'_i | dC C_prev σ'_f | dC I tanh'_g | dH tanh(C) σ'_o]
            mul(dC, F, dC)                              # forward: C = F ⊙ C_prev + ...  ->  dC_prev = dC ⊙ F
            if m is not None:                           # a masked step passes dH through untouched
                mul(dH, keep[t], dH_through)
            dot(dA_t, W_hT, dH)                         # forward: A = ... + H_prev W_h  ->  dH_prev = dA W_hᵀ
            if m is not None:
                add(dH, dH_through, dH)
    # forward: A = [H_prev | X | 1] [W_h ; W_x ; b], all steps at once  ->  one product each
    dA2 = dA.reshape(T * N, 4 * H)
    dW = np.dot(Z[:T].reshape(T * N, H + D + 1).T, dA2, out=_empty(work, "dW", (H + D + 1, 4 * H), dtype))
    # (H+D+1, 4H) = [dW_h ; dW_x ; db] = Zᵀ dA
    dx = (dA2 @ W_x.T).reshape(T, N, D)
    return dx, dH, dC, dW[H:H + D], dW[:H], dW[H + D]
