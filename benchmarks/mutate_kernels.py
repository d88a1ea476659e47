"""Mutation testing of the CUDA kernels: every single-operator change to their value arithmetic must fail a CPU test.

    python3 benchmarks/mutate_kernels.py [--jobs 2] [--files lstm_gates.cuh,gru_kernels.cu] [--limit N]
                                         [--timeout 300] [--json out/mutate_kernels.json] [--list]

The mutants, one change each, in the code of kernels/*.cuh and kernels/*.cu (comments and preprocessor lines
are never touched):
  arith    a binary operator written with spaces on both sides, as the kernels write them: * <-> /, + <-> -,
           and the compound += <-> -=, *= <-> /=
  const    a typed constant T(c) or a floating literal: 0 -> 1, 1 -> 0, anything else -> 1 (0.5 -> 1)
  gate     a gate index name (GATE_I, GATE_F, GATE_G, GATE_O; GRU_R, GRU_Z, GRU_N) -> the next one in its order:
           an index change that stays in bounds
  index    the element index read or written one place before, clamped so it stays in bounds: [e] ->
           [e > 0 ? e - 1 : e], and a trailing `+ j` of an index expression -> `+ (j > 0 ? j - 1 : j)`
Index and launch plumbing is left alone: an operator inside [...] or whose two operands are both integers
(declared int, long long, bool or unsigned in the file, enum and constexpr constants, threadIdx/blockIdx/blockDim/
gridDim, integer literals): a change there moves an access out of bounds, which the emulator's guard zones catch
by construction, and tells nothing about the arithmetic.

Each mutant is written into a private copy of the repository (the working tree is never changed) and a fixed,
derandomized subset of the CPU tests runs against it (CI=true and Hypothesis's derandomized `ci` profile, without
shrinking; `-x`; the kernel-arithmetic tests of tests/test_kernels_cpu.py and the real-kernel tests of
tests/test_emulator.py, or for version 3 (persistent.py) tests/test_persistent.py, only those of the backend(s)
whose source includes the file, and for a .cu file not the header tests, which do not compile it;
ThreadSanitizer runs left out): killed when a test fails
(or the run crashes or times out), survived when all pass. A survivor whose emulator builds are byte for byte the
unmutated ones is `not compiled`: no test compiles the changed code (an uninstantiated template, say). g++ builds
are cached by content (NPYLSTM_EMU_CACHE), so a mutant rebuilds only the emulator its file is in. A kernel file
that no backend splices into an emulator build is skipped, and said so.

Output: one fixed-width line per mutant, the score (killed / (killed + survived)), and a JSON file (written
atomically) with every mutant, the machine and the command.
"""

import argparse
import concurrent.futures
import datetime
import hashlib
import importlib
import json
import os
import pkgutil
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
COPY = ("npylstm", "kernels", "tests", "pyproject.toml")   # what a private copy of the repository holds
TEST_FILES = ("tests/test_kernels_cpu.py", "tests/test_emulator.py")
# a backend whose kernels have their own emulator tests, by npylstm module (the others: TEST_FILES)
BACKEND_TESTS = {"persistent": ("tests/test_persistent.py",)}
# the kernel-arithmetic tests: not ThreadSanitizer (it looks for races, not values), and of test_emulator.py only
# the tests that run npylstm's real kernels (the planted kernels live in the test file, not in kernels/)
TEST_FILTER = "not thread_sanitizer and (not test_emulator or real_kernels)"
HEADER_TESTS = "header or gate_order"   # the tests that compile a .cuh alone (g++ over a few loops), not the kernels
# Hypothesis as in CI (derandomized), without shrinking: a mutant is killed by its first failing example, and
# shrinking it would rerun the emulator dozens of times for nothing
PLUGIN = """from hypothesis import Phase, settings
settings.register_profile("npylstm-mutate", parent=settings.get_profile("ci"), deadline=None, derandomize=True,
                          database=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
"""
TIMEOUT = 300  # seconds per mutant: a killed mutant takes 10-40 s on a loaded 2-core machine, a surviving one more

ARITH = {" * ": " / ", " / ": " * ", " + ": " - ", " - ": " + ", " += ": " -= ", " -= ": " += ", " *= ": " /= ",
         " /= ": " *= "}
GATE_CYCLES = (("GATE_I", "GATE_F", "GATE_G", "GATE_O"), ("GRU_R", "GRU_Z", "GRU_N"))
NEXT_GATE = {g: cycle[(k + 1) % len(cycle)] for cycle in GATE_CYCLES for k, g in enumerate(cycle)}
BUILTINS = {"threadIdx", "blockIdx", "blockDim", "gridDim", "sizeof"}
TYPE_WORDS = {"int", "long", "unsigned", "bool", "size_t", "char", "short"}


class Mutant(NamedTuple):
    file: str       # name in kernels/
    line: int       # 1-based
    col: int        # 1-based column of the change
    op: str         # arith, const, gate, index
    before: str
    after: str

    def apply(self, text):
        lines = text.split("\n")
        s, c = lines[self.line - 1], self.col - 1
        assert s[c:c + len(self.before)] == self.before, (self, s)
        lines[self.line - 1] = s[:c] + self.after + s[c + len(self.before):]
        return "\n".join(lines)

    def label(self):
        return f"{self.before.strip()} -> {self.after.strip()}"


# ------------------------------------------------------------------------------------------------ which code
def code_lines(text):
    """Each line with comments blanked out (same length), and None for preprocessor lines (and their continuations)."""
    out, in_block, continued = [], False, False
    for line in text.split("\n"):
        if continued or (not in_block and line.lstrip().startswith("#")):
            continued = line.rstrip().endswith("\\")
            out.append(None)
            continue
        chars, i = list(line), 0
        while i < len(line):
            if in_block:
                end = line.find("*/", i)
                stop = len(line) if end < 0 else end + 2
                chars[i:stop] = " " * (stop - i)
                in_block, i = end < 0, stop
            elif line.startswith("//", i):
                chars[i:] = " " * (len(line) - i)
                break
            elif line.startswith("/*", i):
                in_block = True
            else:
                i += 1
        out.append("".join(chars))
    return out


_INT_DECL = re.compile(r"\b(?:constexpr\s+)?(?:const\s+)?(?:unsigned\s+|signed\s+)?(?:long\s+long|int|bool|size_t|unsigned)"
                       r"\s+(?!long\b)([A-Za-z_]\w*)")
_ENUM = re.compile(r"\benum\b[^{]*\{([^}]*)\}")
_POINTER_DECL = re.compile(r"[\w>]\*\s*(?:const\s+)?(?:__restrict__\s+)?([A-Za-z_]\w*)")   # T* p: the kernels' style


def _declared(code):
    """Names `code` declares as integers or pointers."""
    names = {m.group(1) for m in _POINTER_DECL.finditer(code)}
    for m in _INT_DECL.finditer(code):
        names.add(m.group(1))
        rest = code[m.end():code.find(";", m.end())]                    # const int k = ..., g = ...;
        names.update(re.findall(r",\s*([A-Za-z_]\w*)\s*=", rest))
    return names


def global_index_names(texts):
    """Index names visible everywhere: enum constants, constexpr integers, and what preprocessor macros declare
    (a loop variable of a for-each macro), in every file."""
    names = set()
    for text in texts:
        code = code_lines(text)
        names |= _declared("\n".join(raw for raw, c in zip(text.split("\n"), code) if c is None))
        joined = "\n".join(c for c in code if c is not None)
        for m in _ENUM.finditer(joined):
            names.update(re.findall(r"([A-Za-z_]\w*)\s*=", m.group(1)))
        names.update(re.findall(r"\bconstexpr\s+\w+(?:\s+\w+)?\s+([A-Za-z_]\w*)\s*=", joined))
    return names


def local_index_names(code):
    """For each line of `code` (code_lines), the index names declared in its top-level piece: a piece starts at a
    code line in column 0 (a signature, a declaration) and takes the indented lines after it, so a function's
    parameters and body are one piece; names do not leak between functions (T* Z in one, T Z in another)."""
    pieces, start = [], 0
    for i, c in enumerate(code + [None]):
        if i == len(code) or (c is not None and c[:1].strip() and not c.startswith("}")):
            if i > start:
                pieces.append((start, i))
            start = i
    out = [set()] * len(code)
    for a, b in pieces:
        names = _declared("\n".join(c for c in code[a:b] if c is not None))
        out[a:b] = [names] * (b - a)
    return out


def _match_back(s, i, close, open_):
    depth = 0
    for k in range(i, -1, -1):
        depth += (s[k] == close) - (s[k] == open_)
        if depth == 0:
            return k
    return 0


def _match_forward(s, i, open_, close):
    depth = 0
    for k in range(i, len(s)):
        depth += (s[k] == open_) - (s[k] == close)
        if depth == 0:
            return k
    return len(s) - 1


def _is_integer_expr(expr, ints):
    """Every name in `expr` an integer one, every literal an integer, no call of a value function."""
    if re.search(r"\d\.\d*|\.\d", expr) or re.search(r"\bT\s*\(", expr):
        return False
    words = [w for w in re.findall(r"[A-Za-z_]\w*", expr) if w not in TYPE_WORDS]
    bases = [w for w in re.findall(r"(?<![.\w])([A-Za-z_]\w*)", expr) if w not in TYPE_WORDS]
    return all(w in ints or w in BUILTINS for w in bases) and bool(words or re.search(r"\d", expr))


def _operand_left(s, i, ints):
    k = i - 1
    while k >= 0 and s[k] == " ":
        k -= 1
    if k < 0:
        return None
    if s[k] == "]":
        return False                                     # an array element: a value
    if s[k] == ")":
        o = _match_back(s, k, ")", "(")
        before = s[:o].rstrip()
        if before and (before[-1].isalnum() or before[-1] == "_"):
            return False                                 # a call: T(c), tanh_t(a), sigmoid(a)
        return _is_integer_expr(s[o + 1:k], ints)
    m = re.search(r"([A-Za-z_][\w.]*|\d+)$", s[:k + 1])
    if m is None:
        return None
    before = s[:m.start()].rstrip()
    if before.endswith(("*", "&")) and not before.endswith("&&") and not re.search(r"[\w)\]]\s*[*&]$", before):
        return False                                     # *p: a kernel dereferences only value pointers
    return _is_integer_expr(m.group(1), ints)


def _operand_right(s, i, ints):
    k = i
    while k < len(s) and s[k] == " ":
        k += 1
    if k >= len(s):
        return None
    if s[k] == "(":
        c = _match_forward(s, k, "(", ")")
        inner = s[k + 1:c]
        if set(inner.split()) <= TYPE_WORDS:             # a cast such as (long long)x: the operand follows it
            return _operand_right(s, c + 1, ints)
        return _is_integer_expr(inner, ints)
    if s[k] == "*" or s[k] == "&":
        return False                                     # *p: a kernel dereferences only value pointers
    m = re.match(r"[A-Za-z_][\w.]*|\d+(?:\.\d*)?", s[k:])
    if m is None:
        return None
    if s[k + m.end():].lstrip().startswith("(") or s[k + m.end():].lstrip().startswith("["):
        return False                                     # a call or an array element
    return _is_integer_expr(m.group(0), ints)


def _literal_after(value):
    v = float(value.rstrip("f"))
    return "0" if v == 1 else "1"


_INT_STATEMENT = re.compile(r"^\s*(?:const\s+)?(?:unsigned\s+)?(?:long\s+long|int|bool|size_t|unsigned)\s+\w")


def _plumbing_spans(s):
    """Spans of line s that only compute indices: inside [...], a for (...) header, an integer declaration."""
    if _INT_STATEMENT.match(s):
        return [(0, len(s))]
    spans = [(m.start(), _match_forward(s, m.end() - 1, "(", ")")) for m in re.finditer(r"\bfor\s*\(", s)]
    depth, open_at = 0, 0
    for k, ch in enumerate(s):
        if ch == "[":
            if depth == 0:
                open_at = k
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
            if depth == 0:
                spans.append((open_at, k))
    return spans


def mutants(text, file, global_names):
    """Every mutant of kernels/`file` (its text), by the operators of the module docstring."""
    out = []
    code = code_lines(text)
    local = local_index_names(code)
    for li, s in enumerate(code):
        if s is None or not s.strip() or "__launch_bounds__" in s or "constexpr" in s or "enum" in s:
            continue
        ints = global_names | local[li]
        spans = _plumbing_spans(s)
        for m in re.finditer(r"(?<=\S)( (?:[*/+-]|[*/+-]=) )(?=\S)", s):
            op = m.group(1)
            if op not in ARITH or any(a <= m.start(1) <= b for a, b in spans):
                continue
            left, right = _operand_left(s, m.start(1), ints), _operand_right(s, m.end(1), ints)
            if left is None or right is None or (left and right):
                continue                                 # an index or an address (or not an operator between operands)
            out.append(Mutant(file, li + 1, m.start(1) + 1, "arith", op, ARITH[op]))
        for m in re.finditer(r"\bT\((\d+(?:\.\d*)?)\)", s):
            out.append(Mutant(file, li + 1, m.start(1) + 1, "const", m.group(1), _literal_after(m.group(1))))
        for m in re.finditer(r"(?<![\w.(])(\d+\.\d*|\.\d+)f?(?![\w.])", s):
            out.append(Mutant(file, li + 1, m.start() + 1, "const", m.group(0), _literal_after(m.group(0))))
        for m in re.finditer(r"\b(GATE_[IFGO]|GRU_[RZN])\b", s):
            out.append(Mutant(file, li + 1, m.start() + 1, "gate", m.group(1), NEXT_GATE[m.group(1)]))
        for m in re.finditer(r"\[e\]", s):
            out.append(Mutant(file, li + 1, m.start() + 1, "index", "[e]", "[e > 0 ? e - 1 : e]"))
        for m in re.finditer(r"\+ j\b(?=\s*[\];,)])", s):
            out.append(Mutant(file, li + 1, m.start() + 1, "index", "+ j", "+ (j > 0 ? j - 1 : j)"))
    return sorted(out, key=lambda m: (m.line, m.col))


# ------------------------------------------------------------------------------------------------ which tests
class Family(NamedTuple):
    """A kernel file the emulator tests build, the kernels built from it, and the tests that run them."""
    kernel_file: str
    names: tuple
    keyword: str      # pytest -k expression picking its tests
    files: frozenset  # kernels/ files spliced into it
    tests: tuple = TEST_FILES   # the test files that run it


def families(root):
    """The kernel sources the CPU tests compile, read from npylstm's backends (a module with KERNEL_FILE and
    NAME_EXPRESSIONS); empty when `root` has no npylstm package (a fixture: every kernel file counts as compiled)."""
    if not (root / "npylstm" / "gpu.py").is_file():
        return []
    sys.path.insert(0, str(root))
    try:
        import npylstm
        from npylstm import gpu
        out = []
        for info in pkgutil.iter_modules(npylstm.__path__):
            text = (root / "npylstm" / f"{info.name}.py").read_text() if not info.ispkg else ""
            if "NAME_EXPRESSIONS = " not in text or "KERNEL_FILE = " not in text:
                continue
            module = importlib.import_module(f"npylstm.{info.name}")
            source = gpu.load_source(module.KERNEL_FILE, root / "kernels")
            spliced = frozenset(re.findall(r'^#line 1 "([^"]+)"', source, re.M))
            keyword = "gru" if "gru" in info.name else "not gru"
            out.append(Family(module.KERNEL_FILE, tuple(module.NAME_EXPRESSIONS), keyword, spliced,
                              BACKEND_TESTS.get(info.name, TEST_FILES)))
        return out
    finally:
        sys.path.remove(str(root))


def test_command(file, mutant_families, all_families, tests):
    """pytest's argv for a mutant of kernels/`file`, which is in `mutant_families` (or `tests`, when given): the
    tests of those backends, in their test files; for a .cu file not the header tests, which do not compile it."""
    pytest = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "mutate_hypothesis"]
    if tests:
        return pytest + tests.split()
    keyword = TEST_FILTER
    if len(mutant_families) < len(all_families):
        keyword = f"({' or '.join(f.keyword for f in mutant_families)}) and {keyword}"
    if file.endswith(".cu"):
        keyword = f"not ({HEADER_TESTS}) and {keyword}"
    files = dict.fromkeys(t for f in mutant_families for t in f.tests) or TEST_FILES   # in order, once each
    return pytest + [*files, "-k", keyword]


# ------------------------------------------------------------------------------------------------ running
def private_copy(root, d):
    """The files the tests need, copied into d (never the working tree itself)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")
    for name in COPY:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, d / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, d / name)
    return d


def _emulator_module(root):
    sys.path.insert(0, str(root / "tests"))
    try:
        return importlib.import_module("emulator")
    finally:
        sys.path.remove(str(root / "tests"))


def build_digest(emulator, root_copy, family, build_dir):
    """sha256 of the emulator library of `family` built from the kernels in root_copy (cached by content)."""
    from npylstm import gpu
    source = gpu.load_source(family.kernel_file, root_copy / "kernels")
    path = emulator.compile_emulator(build_dir, source, family.names)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_one(mutant, copy, original, fams, baseline, emulator, tests, timeout, env):
    """Apply `mutant` in `copy`, decide it, put the file back. Returns (status, seconds, detail).

    The tests run first (most mutants die in the first few); a survivor whose emulator builds are byte for byte
    the unmutated ones is `not compiled`: no test can see the change (builds come from the content cache)."""
    target = copy / "kernels" / mutant.file
    start = time.monotonic()
    target.write_text(mutant.apply(original[mutant.file]))
    try:
        mine = [f for f in fams if mutant.file in f.files]
        try:
            r = subprocess.run(test_command(mutant.file, mine, fams, tests), cwd=copy, env=env, capture_output=True,
                               text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "killed", time.monotonic() - start, f"timeout after {timeout} s"
        tail = (r.stdout.strip().splitlines() or [""])[-1][:160]
        if r.returncode == 1 or r.returncode < 0:
            failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", r.stdout, re.M)
            why = "crashed (signal {})".format(-r.returncode) if r.returncode < 0 else (failed[0] if failed else tail)
            return "killed", time.monotonic() - start, why
        if r.returncode != 0:
            return "error", time.monotonic() - start, f"pytest exit {r.returncode}: {tail} {r.stderr[-300:]}"
        build = copy / ".build"
        if fams and all(build_digest(emulator, copy, f, build) == baseline[f.kernel_file] for f in mine):
            return "not compiled", time.monotonic() - start, "its emulator builds are byte for byte the unmutated ones"
        return "survived", time.monotonic() - start, tail
    finally:
        target.write_text(original[mutant.file])


def run_all(root, todo, jobs, timeout, tests, report):
    """Decide every mutant of `todo` with `jobs` private copies of root; report(mutant, result) as each ends."""
    fams = families(root)
    original = {f.name: f.read_text() for f in (root / "kernels").iterdir() if f.is_file()}
    saved_cache = os.environ.get("NPYLSTM_EMU_CACHE")
    with tempfile.TemporaryDirectory(prefix="mutate_kernels.") as tmp:
        tmp = Path(tmp)
        os.environ["NPYLSTM_EMU_CACHE"] = str(tmp / "cache")        # the script's own builds and the tests' share it
        try:
            (tmp / "plugin").mkdir()
            (tmp / "plugin" / "mutate_hypothesis.py").write_text(PLUGIN)
            copies = [private_copy(root, tmp / f"copy{k}") for k in range(jobs)]
            for c in copies:
                (c / ".build").mkdir()
            baseline, emulator = {}, None
            if fams:
                emulator = _emulator_module(copies[0])
                baseline = {f.kernel_file: build_digest(emulator, copies[0], f, copies[0] / ".build") for f in fams}
            free, results = list(copies), {}

            def work(m):
                copy = free.pop()
                try:
                    env = {**os.environ, "CI": "true", "PYTHONPATH": f"{copy}{os.pathsep}{tmp / 'plugin'}",
                           "HYPOTHESIS_PROFILE": "npylstm-mutate", "PYTHONDONTWRITEBYTECODE": "1"}
                    return m, run_one(m, copy, original, fams, baseline, emulator, tests, timeout, env)
                finally:
                    free.append(copy)

            with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
                for m, result in pool.map(work, todo):
                    results[m] = result
                    report(m, result)
            return results
        finally:
            if saved_cache is None:
                os.environ.pop("NPYLSTM_EMU_CACHE", None)
            else:
                os.environ["NPYLSTM_EMU_CACHE"] = saved_cache


# ------------------------------------------------------------------------------------------------ command line
def all_mutants(root, files=None):
    """(mutants, skipped files with the reason) for kernels/ of root, or only `files`."""
    kernels = root / "kernels"
    names = sorted(p.name for p in kernels.iterdir() if p.suffix in (".cu", ".cuh"))
    if files:
        unknown = [f for f in files if f not in names]
        if unknown:
            raise ValueError(f"--files: {', '.join(unknown)} not in {kernels} (it has {', '.join(names)})")
        names = [n for n in names if n in files]
    texts = {n: (kernels / n).read_text() for n in sorted(p.name for p in kernels.iterdir()
                                                          if p.suffix in (".cu", ".cuh"))}
    global_names = global_index_names(texts.values())
    fams = families(root)
    compiled = set().union(*(f.files for f in fams)) if fams else set(texts)
    out, skipped = [], {}
    for n in names:
        if n not in compiled:
            skipped[n] = "no CPU test compiles it (no npylstm backend splices it into an emulator build)"
            continue
        out.extend(mutants(texts[n], n, global_names))
    return out, skipped


def machine():
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", default=None, help="comma-separated names in kernels/ (default: all)")
    p.add_argument("--limit", type=int, default=None, help="only the first N mutants")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="mutants at once (default 2)")
    p.add_argument("--timeout", type=int, default=TIMEOUT, help=f"seconds per mutant (default {TIMEOUT})")
    p.add_argument("--json", default="out/mutate_kernels.json",
                   help="where to write the results (default out/mutate_kernels.json)")
    p.add_argument("--list", action="store_true", help="list the mutants and stop")
    p.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)   # a fixture repository (tests)
    p.add_argument("--tests", default=None, help=argparse.SUPPRESS)       # pytest arguments instead of the default subset
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.limit is not None and args.limit < 0:
        p.error(f"--limit must be at least 0, got {args.limit}")
    if args.timeout < 1:
        p.error(f"--timeout must be at least 1 second, got {args.timeout}")
    root = Path(args.root).resolve()
    if not (root / "kernels").is_dir():
        p.error(f"--root: {root} has no kernels/ directory")
    try:
        todo, skipped = all_mutants(root, args.files.split(",") if args.files else None)
    except ValueError as e:
        p.error(str(e))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    todo = todo[:args.limit] if args.limit is not None else todo
    if args.list:
        for m in todo:
            print(f"{m.file}:{m.line}:{m.col}  {m.op:6s} {m.label()}")
        print(f"{len(todo)} mutants")
        return 0
    print(f"{len(todo)} mutants, {args.jobs} at a time")
    print(f"{'file:line:col':28s} {'op':6s} {'change':34s} {'result':13s} {'s':>6s}  detail")
    started, date = time.monotonic(), datetime.datetime.now().isoformat(timespec="seconds")

    def report(m, result):
        status, seconds, detail = result
        print(f"{f'{m.file}:{m.line}:{m.col}':28s} {m.op:6s} {m.label():34s} {status:13s} {seconds:6.1f}  {detail}",
              flush=True)

    results = run_all(root, todo, args.jobs, args.timeout, args.tests, report)
    counts = {k: sum(r[0] == k for r in results.values()) for k in ("killed", "survived", "not compiled", "error")}
    decided = counts["killed"] + counts["survived"]
    score = counts["killed"] / decided if decided else float("nan")
    print(f"score {counts['killed']}/{decided} = {100 * score:.1f} % killed; " +
          ", ".join(f"{v} {k}" for k, v in counts.items()) + f"; {time.monotonic() - started:.0f} s")
    print(f"{'file':18s} {'mutants':>7s} {'killed':>7s} {'survived':>8s} {'not compiled':>12s} {'error':>5s}")
    for file in sorted({m.file for m in results}):
        mine = [r[0] for m, r in results.items() if m.file == file]
        print(f"{file:18s} {len(mine):7d} {mine.count('killed'):7d} {mine.count('survived'):8d} "
              f"{mine.count('not compiled'):12d} {mine.count('error'):5d}")
    for m, (status, _, detail) in results.items():
        if status in ("survived", "error"):
            print(f"{status.upper()}: {m.file}:{m.line}:{m.col} {m.op} {m.label()}  ({detail})")
    doc = {"date": date, "machine": machine(),
           "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
           "score": score, "counts": counts, "skipped_files": skipped, "seconds": round(time.monotonic() - started, 1),
           "mutants": [{**m._asdict(), "status": r[0], "seconds": round(r[1], 1), "detail": r[2]}
                       for m, r in results.items()]}
    sys.path.insert(0, str(ROOT))
    from npylstm.files import atomic_write
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, lambda f: f.write(json.dumps(doc, indent=1).encode()))
    print(f"wrote {args.json}")
    return 0 if counts["error"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
