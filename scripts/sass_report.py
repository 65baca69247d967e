"""Static SASS report of fusedrnn's CUDA kernels, without a GPU.

    python scripts/sass_report.py [--so fusedrnn/_C*.so] [--arch sm_90]
                                  [--source lstm_persistent] [--kernel REGEX]

Extracts one compiled module (default: csrc/cuda/lstm_persistent.cu for
sm_90) from the built extension with cuobjdump, disassembles it with
nvdisasm (line info: setup.py builds with -lineinfo) and prints, for each
kernel whose mangled name matches --kernel, its registers per thread and
every loop (a backward branch): the instructions of its body, the FFMAs,
shared/global loads and stores and shuffles among them, and the source lines
it spans.  The instructions of a loop body times its trip count is what a
warp issues for it, so this is how the per-step instruction budget of the
persistent kernels was counted (benchmarks/NOTES_gpu.md, 2026-12-04): a
check of a change's cost that needs no GPU.  What it cannot say is how long
anything takes.

The tools come from the CUDA toolkit when it has them, else from the copies
that the triton wheel (a torch dependency) ships.
"""
import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_tool(name):
    """cuobjdump / nvdisasm: PATH, the CUDA toolkit, or triton's copy."""
    found = shutil.which(name)
    if found:
        return found
    for env in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(env)
        if root and os.path.exists(os.path.join(root, "bin", name)):
            return os.path.join(root, "bin", name)
    try:
        import triton  # noqa: F401  (only for its location)
        cand = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        if os.path.exists(cand):
            return cand
    except ImportError:
        pass
    raise SystemExit(f"sass_report.py: {name} not found (CUDA toolkit bin/, PATH or the "
                     "triton wheel's backends/nvidia/bin)")


def parse(sass):
    """{kernel: [(address, source line, instruction text, label or None)]}."""
    kernels, cur, line, pending = {}, None, None, None
    for raw in sass.splitlines():
        m = re.match(r"^(_Z\S+|[A-Za-z_]\w*):\s*$", raw)
        if m and not raw.startswith(".L"):
            cur = m.group(1)
            kernels[cur] = []
            line = pending = None
            continue
        if cur is None:
            continue
        if raw.lstrip().startswith("//##"):
            lm = re.search(r"line (\d+)", raw)
            line = int(lm.group(1)) if lm else line
            continue
        if raw.startswith(".L_x"):
            pending = raw.rstrip(":").strip()
            continue
        im = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s*(.*?)\s*;?\s*$", raw)
        if im:
            kernels[cur].append((int(im.group(1), 16), line, im.group(2), pending))
            pending = None
    return kernels


def opcode(text):
    parts = text.split()
    if parts and parts[0].startswith("@"):
        parts = parts[1:]
    return parts[0] if parts else ""


def loops(instrs):
    """Every backward branch: (first index, last index) of its body."""
    where = {lab: i for i, (_, _, _, lab) in enumerate(instrs) if lab}
    out = []
    for i, (_, _, text, _) in enumerate(instrs):
        if opcode(text).startswith("BRA"):
            m = re.search(r"\((\.L_x_\d+)\)", text)
            if m and m.group(1) in where and where[m.group(1)] <= i:
                out.append((where[m.group(1)], i))
    return out


def summary(body):
    ops = collections.Counter(opcode(t) for _, _, t, _ in body)
    pick = lambda *prefixes: sum(n for o, n in ops.items()  # noqa: E731
                                 if any(o.startswith(p) for p in prefixes))
    lines = sorted({ln for _, ln, _, _ in body if ln})
    span = f"{lines[0]}-{lines[-1]}" if lines else "?"
    return (f"{len(body):5d} instr  FFMA {pick('FFMA', 'DFMA', 'HFMA'):4d}  "
            f"LDS {pick('LDS'):3d}  STS {pick('STS'):3d}  LDG {pick('LDG', 'LD.'):3d}  "
            f"STG {pick('STG', 'ST.'):3d}  SHFL {pick('SHFL'):3d}  lines {span}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--so", help="the built extension (default: fusedrnn/_C*.so in this checkout)")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--source", default="lstm_persistent",
                   help="which .cu file's module (its cubin is named after it)")
    p.add_argument("--kernel", default=r"lstm_persistent_(fwd|bwd)_kernelIfLb0E",
                   help="regex on the mangled kernel names (default: the float32 FMA kernels)")
    a = p.parse_args(argv)
    so = a.so or next(iter(sorted(glob.glob(os.path.join(ROOT, "fusedrnn", "_C*.so")))), None)
    if not so or not os.path.exists(so):
        raise SystemExit("sass_report.py: no built extension (python setup.py build_ext --inplace)")
    cuobjdump, nvdisasm = find_tool("cuobjdump"), find_tool("nvdisasm")
    listing = subprocess.run([cuobjdump, "-lelf", so], capture_output=True, text=True).stdout
    names = re.findall(r"ELF file\s+\d+:\s+(\S+)", listing)
    want = [n for n in names if n.startswith(a.source + ".") and n.endswith(a.arch + ".cubin")]
    if not want:
        raise SystemExit(f"sass_report.py: no {a.source} cubin for {a.arch} in {so} "
                         f"(modules: {', '.join(names) or 'none: a CPU-only build?'})")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([cuobjdump, "-xelf", want[0], so], cwd=tmp, check=True,
                       capture_output=True)
        cubin = os.path.join(tmp, want[0])
        sass = subprocess.run([nvdisasm, "-g", "-c", cubin], capture_output=True, text=True,
                              check=True).stdout
        usage = subprocess.run([cuobjdump, "-res-usage", cubin], capture_output=True,
                               text=True).stdout
    regs = dict(re.findall(r"Function (\S+):\s*REG:(\d+)", usage))
    kernels = parse(sass)
    shown = 0
    for name, instrs in kernels.items():
        if not re.search(a.kernel, name):
            continue
        shown += 1
        print(f"== {name}\n   {len(instrs)} instructions, {regs.get(name, '?')} registers")
        for i, j in loops(instrs):
            print(f"   loop @{instrs[i][0]:#06x}: {summary(instrs[i:j + 1])}")
    if not shown:
        raise SystemExit(f"sass_report.py: no kernel matches {a.kernel!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
