"""Without a GPU: the loader's source compiles for sm_90 with nvcc and through NVRTC, with no register spill.

* nvcc -arch=sm_90 -cubin -Xptxas -v on the loader's spliced source: every kernel of every version, float and
  double, compiles; ptxas reports 0 spill bytes and 0 stack frame for each (a stack frame means a register
  array went to local memory).
* NVRTC (cupy.cuda.nvrtc, which works without a device) with the loader's exact options (-lineinfo included,
  as the sanitizer runs compile) and name expressions: the path RawModule takes on a GPU machine.
* The loader itself: kernels/ is found in a checkout and in a built wheel; headers are spliced once with
  #line markers, so a header edit changes the source (CuPy's cache key) and messages name the real file.

In CI (env CI set) a missing nvcc or NVRTC is a failure, not a skip: .ci/run installs both.
"""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from npylstm import gpu, gru_gpu, persistent

REPO = Path(__file__).resolve().parent.parent
ARCH = "sm_90"  # the H100 / H200 this project is timed on
# every kernel file with its loader module (KERNEL_FILE, NAME_EXPRESSIONS, KERNEL_VERSIONS, KERNEL_NAMES, THREADS1)
KERNEL_MODULES = pytest.mark.parametrize("mod", [gpu, gru_gpu, persistent], ids=["lstm", "gru", "persistent"])


def _missing(what):
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing: CI must compile the kernels without a GPU")
    pytest.skip(f"{what} is missing")


def _nvcc():
    path = shutil.which("nvcc")
    if path is None:
        _missing("nvcc")
    return path


def _nvrtc():
    try:
        from cupy.cuda import nvrtc
        nvrtc.getVersion()
    except Exception as e:  # ImportError, or CuPy without the NVRTC library
        _missing(f"CuPy's NVRTC ({type(e).__name__}: {e})")
    return nvrtc


def _mangled_prefix(name_expression):
    """'npylstm::lstm_forward_kernel1<float>' -> '_ZN7npylstm20lstm_forward_kernel1IfE' (Itanium mangling)."""
    m = re.fullmatch(r"npylstm::(\w+)<(float|double)>", name_expression)
    name, t = m.group(1), {"float": "f", "double": "d"}[m.group(2)]
    return f"_ZN7npylstm{len(name)}{name}I{t}E"


def _ptxas_report(text):
    """{mangled entry name: (stack frame, spill store, spill load) bytes} from a ptxas -v report."""
    out, current = {}, None
    for line in text.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = m.group(1)
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current:
            out[current] = tuple(int(v) for v in m.groups())
            current = None
    return out


def _assert_every_kernel_clean(report, log, name_expressions):
    found = _ptxas_report(report)
    for expr in name_expressions:
        hits = [k for k in found if k.startswith(_mangled_prefix(expr))]
        assert hits, f"{expr} was not compiled; ptxas report:\n{log}"
        stack, spill_st, spill_ld = found[hits[0]]
        assert (stack, spill_st, spill_ld) == (0, 0, 0), (
            f"{expr}: {stack} bytes stack frame, {spill_st} bytes spill stores, {spill_ld} bytes spill loads")


@KERNEL_MODULES
def test_nvcc_compiles_every_kernel_for_sm90_without_spills(tmp_path, mod):
    src = tmp_path / mod.KERNEL_FILE
    src.write_text(gpu.load_source(mod.KERNEL_FILE))
    r = subprocess.run([_nvcc(), f"-arch={ARCH}", "-cubin", "-Xptxas", "-v", "-std=c++17", "-Werror", "all-warnings",
                        "-o", str(tmp_path / "k.cubin"), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, f"nvcc failed:\n{r.stderr}"
    _assert_every_kernel_clean(r.stderr, r.stderr, mod.NAME_EXPRESSIONS)


@KERNEL_MODULES
def test_nvrtc_compiles_the_loader_source_as_cupy_would(mod, monkeypatch):
    """With the loader's options as the sanitizer runs set them (NPYLSTM_LINEINFO=1: -lineinfo, which leaves the
    code and its registers as they are; nvcc above compiles without it)."""
    nvrtc = _nvrtc()
    monkeypatch.setenv(gpu.LINEINFO_ENV, "1")
    extra = ()
    if mod is persistent:   # cooperative_groups.h: NVRTC has no copy of its own (persistent.cooperative_include)
        extra = persistent.cooperative_include() or _missing("cooperative_groups.h (the CUDA toolkit's headers)")
    prog = nvrtc.createProgram(gpu.load_source(mod.KERNEL_FILE), mod.KERNEL_FILE, [], [])
    try:
        for expr in mod.NAME_EXPRESSIONS:
            nvrtc.addNameExpression(prog, expr)
        # CuPy's RawModule adds -ftz=true and -arch=sm_XX for the device to the loader's options
        options = list(gpu.compile_options()) + list(extra) + ["-ftz=true", f"-arch={ARCH}", "--ptxas-options=-v"]
        assert "-lineinfo" in options
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as e:
            pytest.fail(f"NVRTC failed: {e}\n{nvrtc.getProgramLog(prog)}")
        log = nvrtc.getProgramLog(prog)
        for expr in mod.NAME_EXPRESSIONS:
            assert nvrtc.getLoweredName(prog, expr).startswith(_mangled_prefix(expr))
        assert len(nvrtc.getCUBIN(prog)) > 0
        _assert_every_kernel_clean(log, log, mod.NAME_EXPRESSIONS)
    finally:
        nvrtc.destroyProgram(prog)


@pytest.mark.parametrize("kernel_file,header,line", [
    (gpu.KERNEL_FILE, "lstm_gates.cuh", "s.I = sigmoid(A_i);"),
    (gru_gpu.KERNEL_FILE, "gru_gates.cuh", "*R = sigmoid(A_xr + A_hr);"),
], ids=["lstm", "gru"])
def test_compiler_messages_name_the_header_and_its_line(tmp_path, kernel_file, header, line):
    """A spliced header keeps its name and line numbers in compiler messages (the #line markers)."""
    kernels = tmp_path / "kernels"
    shutil.copytree(gpu.kernel_dir(), kernels)
    lines = (kernels / header).read_text().splitlines()
    bad = next(i for i, text in enumerate(lines) if line in text)
    lines[bad] = lines[bad].replace(line, line[:-1] + " +;")   # a syntax error
    (kernels / header).write_text("\n".join(lines) + "\n")
    src = tmp_path / "spliced.cu"
    src.write_text(gpu.load_source(kernel_file, directory=kernels))
    r = subprocess.run([_nvcc(), f"-arch={ARCH}", "-cubin", "-std=c++17", "-o", str(tmp_path / "k.cubin"), str(src)],
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert f"{header}({bad + 1})" in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------ the loader
def test_load_source_splices_each_header_once_with_line_markers():
    src = gpu.load_source()
    lines = src.splitlines()
    assert lines[0] == f'#line 1 "{gpu.KERNEL_FILE}"'
    assert not any(re.match(r'\s*#\s*include\s*"', line) for line in lines), "an #include was left unspliced"
    assert src.count('#line 1 "lstm_gates.cuh"') == 1
    assert src.count("struct Saved") == 1
    # after the header, the markers resume the .cu file at the line after its #include
    cu = (gpu.kernel_dir() / gpu.KERNEL_FILE).read_text().splitlines()
    include_line = next(i for i, line in enumerate(cu, 1) if line.startswith('#include "lstm_gates.cuh"'))
    assert f'#line {include_line + 1} "{gpu.KERNEL_FILE}"' in lines


def test_gru_source_splices_both_headers_once():
    """gru_kernels.cu includes gru_gates.cuh, which includes lstm_gates.cuh (the shared activations)."""
    src = gpu.load_source(gru_gpu.KERNEL_FILE)
    assert src.splitlines()[0] == f'#line 1 "{gru_gpu.KERNEL_FILE}"'
    assert not any(re.match(r'\s*#\s*include\s*"', line) for line in src.splitlines()), "an #include was left unspliced"
    assert src.count('#line 1 "gru_gates.cuh"') == 1 and src.count('#line 1 "lstm_gates.cuh"') == 1
    assert src.count("inline T sigmoid(") == 1


def test_header_edit_changes_the_loader_source(tmp_path):
    """CuPy caches compiled modules by source text: a header edit must reach the text to rebuild."""
    kernels = tmp_path / "kernels"
    shutil.copytree(gpu.kernel_dir(), kernels)
    before = gpu.load_source(directory=kernels)
    header = kernels / "lstm_gates.cuh"
    header.write_text(header.read_text() + "\n// edited\n")
    assert gpu.load_source(directory=kernels) != before


def test_kernel_dir_is_the_checkout_kernels():
    assert gpu.kernel_dir() in (REPO / "kernels", REPO / "npylstm" / "kernels")
    assert (gpu.kernel_dir() / "lstm_gates.cuh").is_file()


@pytest.mark.parametrize("mod,names", [(gpu, ("THREADS1", "TJ", "TN")), (gru_gpu, ("THREADS1",)),
                                       (persistent, ("VEC_BYTES3", "MAX_ROWS3", "MAX_THREADS3"))],
                         ids=["lstm", "gru", "persistent"])
def test_launch_constants_match_the_kernel_file(mod, names):
    cu = (gpu.kernel_dir() / mod.KERNEL_FILE).read_text()
    for name in names:
        m = re.search(rf"constexpr int {name} = (\d+);", cu)
        assert m, f"{name} not found in {mod.KERNEL_FILE}"
        assert int(m.group(1)) == getattr(mod, name), (
            f"{name}: {m.group(1)} in the .cu, {getattr(mod, name)} in {mod.__name__}")


@KERNEL_MODULES
def test_every_version_has_all_kernels_in_both_dtypes(mod):
    versions = gpu.STEP_VERSIONS if mod is gpu else mod.KERNEL_VERSIONS   # gpu's version 3 is persistent's file
    assert len(mod.NAME_EXPRESSIONS) == len(versions) * len(mod.KERNEL_NAMES) * 2
    cu = (gpu.kernel_dir() / mod.KERNEL_FILE).read_text()
    for v in versions:
        assert f"Version {v} (" in cu, f"version {v} has no paragraph in the header comment"
        for name in mod.KERNEL_NAMES:
            assert f"{name}{v}(" in cu


def _can_build_wheels_here():
    try:
        import setuptools
    except ImportError:
        return False
    version = tuple(int(p) for p in re.findall(r"\d+", setuptools.__version__)[:2])
    if version >= (70, 1):
        return True
    try:
        import wheel  # noqa: F401
        return True
    except ImportError:
        return False


def test_wheel_ships_the_kernels_and_the_loader_finds_them(tmp_path):
    """A built wheel, unpacked away from the checkout: kernel_dir() is npylstm/kernels/ inside it."""
    # build with the setuptools at hand when it can make wheels by itself (>= 70.1, or with `wheel`): no download
    isolation = ["--no-build-isolation"] if _can_build_wheels_here() else []
    src = tmp_path / "src"  # a copy, so the build leaves no build/ or egg-info in the checkout
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", "out",
                                                              ".hypothesis", ".pytest_cache", "tests", "benchmarks"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    if r.returncode != 0 and "No module named pip" in r.stderr:
        pytest.skip("pip is not available")
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "dist").glob("npylstm-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        for f in ("lstm_kernels.cu", "lstm_persistent.cu", "lstm_gates.cuh", "gru_kernels.cu", "gru_gates.cuh"):
            assert f"npylstm/kernels/{f}" in names, names
        z.extractall(tmp_path / "site")
    away = tmp_path / "elsewhere"
    away.mkdir()
    code = "from npylstm import gpu; print(gpu.kernel_dir()); print(len(gpu.load_source()))"
    r = subprocess.run([sys.executable, "-c", code], cwd=away, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.split()[0]) == tmp_path / "site" / "npylstm" / "kernels"
