"""A gallery of classic mistakes in hand-derived LSTM and GRU backward passes, and what catches them.

Each bug is one line of npylstm's own code written the way the mistake writes it, planted in a fresh copy of
the module (the source with that line replaced, executed as a new module: npylstm itself is untouched).
For each, the gallery runs the check `npylstm gradcheck` runs at that level (random, non-zero biases, states
and upstream gradients; the sequence with no mask, pre- and post-padding), and the same check with zero
biases and zero initial states -- the common shortcut, under which some of these bugs pass.

    npylstm gradcheck --bugs          results = run_bugs(sizes)   # [BugResult, ...]
"""

import importlib
import inspect
import types
from typing import NamedTuple

import numpy as np

from .gradcheck import MASKS, check_function


class Bug(NamedTuple):
    title: str         # the mistake, in words
    variant: str       # "lstm", "gru-after" (reset_after=True) or "gru-before" (reset_after=False)
    level: str         # "cell" (one step) or "sequence" (BPTT)
    module: str        # the npylstm module it is planted in
    old: str           # the line as npylstm writes it (found exactly once in the module) ...
    new: str           # ... and as the mistake writes it
    zero_init_hides: bool   # a check with zero biases and zero initial states passes it
    note: str = ""     # why, where it is not obvious


BUGS = (
    Bug("σ' written as σ(1 + σ) (the forget gate's)", "lstm", "cell", "cell",
        "dA_f = dF * F * (1.0 - F)", "dA_f = dF * F * (1.0 + F)", True,
        "with c_prev = 0, dF = dC ⊙ C_prev is 0 whatever σ' is"),
    Bug("the tanh'(C) factor dropped from dC", "lstm", "cell", "cell",
        "dC = dC + dH * O * (1.0 - tanh_C ** 2)", "dC = dC + dH * O", False),
    Bug("tanh'(A_g) taken from tanh(C), not from C_tilde", "lstm", "cell", "cell",
        "dA_g = dC_tilde * (1.0 - C_tilde ** 2)", "dA_g = dC_tilde * (1.0 - tanh_C ** 2)", False),
    Bug("dC_prev multiplied by I instead of F", "lstm", "cell", "cell",
        "dc_prev = dC * F", "dc_prev = dC * I", False),
    Bug("dF takes H_prev where C_prev belongs", "lstm", "cell", "cell",
        "dF = dC * c_prev", "dF = dC * h_prev", True,
        "with h_prev = c_prev = 0 the right and the wrong dF are both 0"),
    Bug("the i and f gates read each other's bias (forward)", "lstm", "cell", "cell",
        "A = x @ W_x + h_prev @ W_h + b", "A = x @ W_x + h_prev @ W_h + b.reshape(4, -1)[[1, 0, 2, 3]].ravel()", False,
        "zero biases hide it from an output comparison with PyTorch, not from this check: the numeric db follows b"),
    Bug("dC not carried back: dC_t forgets the dC from t+1", "lstm", "sequence", "sequence",
        "add(dC, P_t, dC)", "np.copyto(dC, P_t)", False),
    Bug("dc0 dropped (returned as zeros)", "lstm", "sequence", "sequence",
        "return dx, dH, dC,", "return dx, dH, np.zeros_like(dC),", False),
    Bug("the mask ignored in the backward", "lstm", "sequence", "sequence",
        "Z, W_x, W_h, Cs, gates, tanh_C, m = cache", "Z, W_x, W_h, Cs, gates, tanh_C, m = *cache[:6], None", False,
        "only a check with a padding mask sees it"),
    Bug("dW_x taken from the last step only", "gru-after", "sequence", "gru_sequence",
        "dW_x = x.reshape(T * N, D).T @ dA_x2", "dW_x = x[-1].T @ dA_x[-1]", False),
    Bug("dW_h skips step 1 (its H_prev is h0, 'zero anyway')", "gru-after", "sequence", "gru_sequence",
        "dW_h = Hs_prev.T @ dA_h2", "dW_h = Hs[1:T].reshape(-1, H).T @ dA_h2[N:]", True,
        "with h0 = 0 the missing term H_0ᵀ dA_1 is 0"),
    Bug("the transpose swapped on the square W_h,n", "gru-before", "cell", "gru_cell",
        "dRH = dA_n @ W_hn.T", "dRH = dA_n @ W_hn", False),
    Bug("(1 − Z) and Z swapped", "gru-after", "cell", "gru_cell",
        "dH_tilde = dH * (1.0 - Z)", "dH_tilde = dH * Z", False),
    Bug("dR forgets b_h,n inside the reset", "gru-after", "cell", "gru_cell",
        "dR = dA_n * A_hn", "dR = dA_n * (h_prev @ W_hn)", True,
        "with b_h = 0 (and h_prev = 0) the two are equal"),
)


class Verdict(NamedTuple):
    caught: bool
    flagged: dict      # tensor -> its largest relative error over the checks, for the tensors that failed


class BugResult(NamedTuple):
    bug: Bug
    default: Verdict   # random, non-zero biases and states (what `npylstm gradcheck` draws)
    zero_init: Verdict # the same with zero biases and zero initial states


def plant(bug):
    """A new module: npylstm.<bug.module>'s source with bug.old replaced by bug.new, executed."""
    original = importlib.import_module(f"npylstm.{bug.module}")
    source = inspect.getsource(original)
    if source.count(bug.old) != 1:
        raise ValueError(f"plant: {bug.old!r} occurs {source.count(bug.old)} times in {bug.module}.py, expected once")
    module = types.ModuleType(f"npylstm.{bug.module}_with_bug")
    module.__package__ = "npylstm"
    exec(compile(source.replace(bug.old, bug.new), f"<{bug.module}.py, planted: {bug.new}>", "exec"), module.__dict__)
    return module


def _verdict(bug, module, sizes, zero_init):
    """The check of the bug's level (each mask for a sequence), fresh draws from sizes' seed."""
    rng = np.random.default_rng(sizes["seed"])
    size = dict(T=sizes["steps"], N=sizes["batch"], D=sizes["input_size"], H=sizes["hidden"], scale=sizes["weight_scale"])
    flagged = {}
    for mask in (("none",) if bug.level == "cell" else MASKS):
        for r in check_function(rng, bug.variant, bug.level, mask, module=module, zero_init=zero_init, **size):
            if not r.passed:
                err = r.max_rel_error if np.isfinite(r.max_rel_error) else np.inf
                flagged[r.tensor] = max(flagged.get(r.tensor, 0.0), err)
    return Verdict(bool(flagged), dict(sorted(flagged.items(), key=lambda kv: -kv[1])))


def run_bugs(sizes, bugs=BUGS):
    """Plant each bug and check it both ways; sizes: check_gradients' keywords (steps, batch, ..., seed)."""
    results = []
    for bug in bugs:
        module = plant(bug)
        results.append(BugResult(bug, _verdict(bug, module, sizes, False), _verdict(bug, module, sizes, True)))
    return results


def _flagged(v):
    return ", ".join(f"{k} {e:.1e}" for k, e in v.flagged.items()) if v.caught else "nothing: every tensor passes"


def format_gallery(results):
    """Each bug: its line before and after, the tensors each check flags and by how much; then a table."""
    lines = []
    for k, r in enumerate(results, 1):
        b = r.bug
        lines += [f"{k:2d}. {b.title}   [{b.variant} {b.level}, {b.module}.py]",
                  f"    - {b.old}", f"    + {b.new}",
                  f"    default check ({'caught' if r.default.caught else 'MISSED'}): {_flagged(r.default)}",
                  f"    zero biases and states ({'caught' if r.zero_init.caught else 'MISSED'}): {_flagged(r.zero_init)}"]
        lines += [f"    ({b.note})"] if b.note else []
    w = max(len(r.bug.title) for r in results)
    lines += ["", f"{'bug':<{w}}  {'where':<19}  {'default check':<13}  zero biases and states",
              f"{'-' * w}  {'-' * 19}  {'-' * 13}  {'-' * 22}"]
    for r in results:
        lines.append(f"{r.bug.title:<{w}}  {r.bug.variant + ' ' + r.bug.level:<19}  "
                     f"{'caught' if r.default.caught else 'MISSED':<13}  {'caught' if r.zero_init.caught else 'MISSED'}")
    caught = sum(r.default.caught for r in results)
    missed = sum(not r.zero_init.caught for r in results)
    lines.append(f"{caught}/{len(results)} caught by the default check; {missed} of them pass a check with zero "
                 f"biases and zero initial states")
    return "\n".join(lines)


def run_gallery(sizes):
    """`npylstm gradcheck --bugs`: print the gallery; returns (every bug caught by the default check, JSON payload)."""
    results = run_bugs(sizes)
    print(f"backward bug gallery: each bug planted in a copy of the module; steps={sizes['steps']} "
          f"batch={sizes['batch']} input_size={sizes['input_size']} hidden={sizes['hidden']} "
          f"scale={sizes['weight_scale']} seed={sizes['seed']}\n")
    print(format_gallery(results))
    finite = (lambda v: dict(caught=v.caught, flagged={k: (e if np.isfinite(e) else None) for k, e in v.flagged.items()}))
    payload = dict(command="gradcheck --bugs", **sizes, bugs=[
        dict(title=r.bug.title, variant=r.bug.variant, level=r.bug.level, module=r.bug.module, old=r.bug.old,
             new=r.bug.new, default=finite(r.default), zero_init=finite(r.zero_init)) for r in results])
    return all(r.default.caught for r in results), payload
