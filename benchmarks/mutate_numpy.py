"""Mutation testing of the hand-written NumPy backward passes: how many single-operator bugs does each check catch?

Every mutant changes one operator, operand or index in one backward function (the list below), the way a
slip in a hand derivation would:

    +  <->  -      *  <->  /      a + b -> a, b      a - b -> a, b - a      a * b -> a, b      a / b -> a
    +=  <->  -=    *=  <->  /=    -a -> a            0 <-> 1 (0.0 <-> 1.0)
    x[i] -> x[i + 1],  x[a:b] -> x[a + 1:b], x[a:b + 1]      np.add <-> np.subtract, np.multiply <-> np.divide

and each mutant, in a temporary copy of the repository, is run against
  (a) the test files that exercise the mutated module (TARGETS below; pytest -x, CI=true: derandomized
      hypothesis), and
  (b) `npylstm gradcheck` alone: its default run's checks, the same draws, stopped at the first failing
      check (npylstm.gradcheck.iter_gradients; the command runs them all, and fails where this fails); with
      --compare-rev REV, also the default check of npylstm/gradcheck.py as it was at git revision REV;
a mutant is caught (killed) when the run fails, errs or times out. Lines in error messages are not mutated.

    python benchmarks/mutate_numpy.py [--modules cell,sequence] [--limit N] [--jobs 1] [--json out/mutants.json]
"""

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from npylstm.files import atomic_write  # noqa: E402

# module -> (functions whose bodies are mutated, the line marker where mutation starts or None, test files)
TARGETS = {
    "cell": (["step_backward"], None, ["tests/test_cell.py"]),
    "sequence": (["sequence_backward", "_backward_factors", "_backward_steps"], None, ["tests/test_sequence.py"]),
    "gru_cell": (["gru_step_backward"], None, ["tests/test_gru.py"]),
    "gru_sequence": (["gru_sequence_backward"], None, ["tests/test_gru.py"]),
    "layers": (["Linear.backward"], None, ["tests/test_layers_losses.py", "tests/test_check_backward.py"]),
    # the losses compute their gradient after the forward, from the "# forward:" comment on
    "losses": (["mse_loss", "cross_entropy_loss"], "# forward:", ["tests/test_layers_losses.py",
                                                                   "tests/test_check_backward.py"]),
}
SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
SWAP_CALL = {"add": "np.subtract", "np.add": "np.subtract", "np.subtract": "np.add",
             "mul": "np.divide", "np.multiply": "np.divide", "np.divide": "np.multiply"}
SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def functions(tree, names):
    """The FunctionDef nodes named in `names` ("f" or "Class.method")."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found[node.name] = node
        elif isinstance(node, ast.ClassDef):
            found.update((f"{node.name}.{n.name}", n) for n in node.body if isinstance(n, ast.FunctionDef))
    return [found[n] for n in names]


def _skipped(fn):
    """Nodes not to mutate: the docstring, error messages (raise statements) and f-strings."""
    skip = set()
    for node in ast.walk(fn):
        if isinstance(node, (ast.Raise, ast.JoinedStr)):
            skip.update(id(n) for n in ast.walk(node))
    if fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant):
        skip.update(id(n) for n in ast.walk(fn.body[0]))
    return skip


def _paren(node):
    return f"({ast.unparse(node)})"


def edits(fn, start_line):
    """(node, replacement text, description) for every mutant of fn's body at or after start_line."""
    skip = _skipped(fn)
    for node in ast.walk(fn):
        if id(node) in skip or not hasattr(node, "lineno") or node.lineno < start_line or node is fn:
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in SWAP:
            op = type(node.op)
            yield node, _paren(ast.BinOp(node.left, SWAP[op](), node.right)), f"{SYMBOL[op]} -> {SYMBOL[SWAP[op]]}"
            yield node, _paren(node.left), f"a {SYMBOL[op]} b -> a"
            if op is not ast.Div:
                yield node, _paren(node.right), f"a {SYMBOL[op]} b -> b"
            if op is ast.Sub:
                yield node, _paren(ast.BinOp(node.right, ast.Sub(), node.left)), "a - b -> b - a"
        elif isinstance(node, ast.AugAssign) and type(node.op) in SWAP:
            op = type(node.op)
            yield node, ast.unparse(ast.AugAssign(node.target, SWAP[op](), node.value)), \
                f"{SYMBOL[op]}= -> {SYMBOL[SWAP[op]]}="
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            yield node, _paren(node.operand), "-a -> a"
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float) and node.value in (0, 1):
            yield node, repr(type(node.value)(1 - node.value)), f"{node.value!r} -> {type(node.value)(1 - node.value)!r}"
        elif isinstance(node, ast.Subscript):
            s = node.slice
            for bound, name in ((getattr(s, "lower", None), "lower"), (getattr(s, "upper", None), "upper")):
                if bound is not None:
                    yield bound, f"({ast.unparse(bound)} + 1)", f"slice {name} bound + 1"
            if isinstance(s, (ast.Name, ast.Constant)) and not isinstance(getattr(s, "value", 0), str):
                yield s, f"({ast.unparse(s)} + 1)", "index + 1"
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in SWAP_CALL:
            name = ast.unparse(node.func)
            yield node.func, SWAP_CALL[name], f"{name} -> {SWAP_CALL[name]}"


def replace(source, node, text):
    """source with node's span (ast positions: lines from 1, columns in UTF-8 bytes) replaced by text."""
    lines = source.encode().splitlines(keepends=True)
    a, b = node.lineno - 1, node.end_lineno - 1
    head = b"".join(lines[:a]) + lines[a][:node.col_offset]
    tail = lines[b][node.end_col_offset:] + b"".join(lines[b + 1:])
    return (head + text.encode() + tail).decode()


def mutants(modules):
    """[(module, line, description, mutated source)], one per distinct, compiling, changed program."""
    out = []
    for module in modules:
        names, marker, _ = TARGETS[module]
        path = ROOT / "npylstm" / f"{module}.py"
        source = path.read_text()
        tree = ast.parse(source)
        original = ast.dump(tree)
        seen = set()
        for fn in functions(tree, names):
            start = fn.lineno
            if marker is not None:
                start = next(i for i, line in enumerate(source.splitlines(), 1) if i > fn.lineno and marker in line)
            for node, text, what in edits(fn, start):
                mutated = replace(source, node, text)
                try:
                    changed = ast.dump(ast.parse(mutated)) != original
                except SyntaxError:
                    continue
                if changed and mutated not in seen:
                    seen.add(mutated)
                    out.append((module, node.lineno, what, mutated))
    return out


def run(cmd, cwd, timeout):
    """(failed, seconds): the command failed, erred or ran out of time."""
    env = dict(os.environ, CI="true", PYTHONPATH=str(cwd), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    t = time.perf_counter()
    try:
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    return rc != 0, time.perf_counter() - t


def copy_repo(dest):
    """The files git tracks (and this script's untracked siblings), copied to dest."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)


REV_MODULE = "gradcheck_at_rev"   # --compare-rev: the older gradcheck.py, copied in under this name


def checks(module, rev=None):
    """The runs of a mutant of `module`: its test files, the default gradient check (and the older one)."""
    pytest = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TARGETS[module][2]]
    first_failure = ("import sys; from npylstm.gradcheck import iter_gradients; "
                     "sys.exit(any(not all(r.passed for r in rows) for rows in iter_gradients()))")
    runs = {"tests": pytest, "gradcheck": [sys.executable, "-c", first_failure]}
    if rev:
        runs[f"gradcheck@{rev}"] = [sys.executable, "-c", f"import sys; from npylstm import {REV_MODULE} as g; "
                                    f"sys.exit(0 if all(r.passed for r in g.check_gradients()) else 1)"]
    return runs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modules", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    p.add_argument("--limit", type=int, default=None, help="only the first N mutants (a smoke run)")
    p.add_argument("--jobs", type=int, default=1, help="mutants run at once, each in its own copy (default 1)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per run before it counts as caught")
    p.add_argument("--json", default=None, help="write every mutant's outcome here")
    p.add_argument("--compare-rev", default=None, metavar="REV",
                   help="also run the default check of npylstm/gradcheck.py at git revision REV")
    p.add_argument("--list", action="store_true", help="print the mutants and stop")
    args = p.parse_args(argv)
    modules = args.modules.split(",")
    if any(m not in TARGETS for m in modules) or args.jobs < 1:
        p.error(f"--modules must be of {', '.join(TARGETS)} and --jobs >= 1")
    todo = mutants(modules)[:args.limit]
    if args.list:
        for module, line, what, _ in todo:
            print(f"{module}.py:{line}  {what}")
        print(f"{len(todo)} mutants")
        return 0

    with tempfile.TemporaryDirectory(prefix="npylstm-mutants-") as tmp:
        copies = [Path(tmp) / f"copy{k}" for k in range(args.jobs)]
        for c in copies:
            copy_repo(c)
            if args.compare_rev:
                old = subprocess.run(["git", "show", f"{args.compare_rev}:npylstm/gradcheck.py"], cwd=ROOT,
                                     capture_output=True, text=True, check=True).stdout
                (c / "npylstm" / f"{REV_MODULE}.py").write_text(old)
        tests = sorted({f for m in modules for f in TARGETS[m][2]})
        baseline = dict(checks(modules[0], args.compare_rev), tests=checks(modules[0])["tests"][:7] + tests)
        for name, cmd in baseline.items():                  # the unmutated copy passes both
            if run(cmd, copies[0], args.timeout)[0]:
                print(f"mutate_numpy: the unmutated copy fails its {name} run: fix that first", file=sys.stderr)
                return 1
        free = list(copies)
        results = []

        def one(k):
            module, line, what, source = todo[k]
            copy = free.pop()
            target = copy / "npylstm" / f"{module}.py"
            original = target.read_text()
            try:
                target.write_text(source)
                outcome = {name: run(cmd, copy, args.timeout) for name, cmd in checks(module, args.compare_rev).items()}
            finally:
                target.write_text(original)
                free.append(copy)
            r = dict(module=module, line=line, mutation=what, **{f"{n}_caught": o[0] for n, o in outcome.items()},
                     **{f"{n}_seconds": round(o[1], 2) for n, o in outcome.items()})
            print(f"[{k + 1}/{len(todo)}] {module}.py:{line:<4} {what:<24} " + "   ".join(
                f"{n}: {'caught' if o[0] else 'SURVIVED'} ({o[1]:.1f} s)" for n, o in outcome.items()), flush=True)
            return r

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(one, range(len(todo))))
        wall = time.perf_counter() - t0

    names = list(checks(modules[0], args.compare_rev))
    print(f"\n{'module':<14} {'mutants':>7}" + "".join(f" {n + ' catches':>24}" for n in names))
    for module in modules + ["all"]:
        rs = [r for r in results if module in ("all", r["module"])]
        if rs:
            print(f"{module:<14} {len(rs):>7}" + "".join(
                f" {sum(r[n + '_caught'] for r in rs):>14} ({100 * sum(r[n + '_caught'] for r in rs) / len(rs):5.1f} %)"
                for n in names))
    for name in names:
        for r in results:
            if not r[f"{name}_caught"]:
                print(f"survives {name}: {r['module']}.py:{r['line']}  {r['mutation']}")
    cpu = sum(r[n + "_seconds"] for r in results for n in names)
    print(f"{len(results)} mutants in {wall:.0f} s ({cpu:.0f} s of runs, {args.jobs} job(s))")
    if args.json:
        data = (json.dumps(dict(modules=modules, wall_seconds=round(wall, 1), mutants=results), indent=1) + "\n").encode()
        atomic_write(args.json, lambda f: f.write(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
