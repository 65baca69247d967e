"""One D2L-size LSTM forward (and optionally backward) on CUDA with a chosen
kernel tier, for a profiler to look at:

    ncu --kernel-name regex:lstm --launch-skip 20 --launch-count 4 --set full \\
        -o prof python scripts/profile_step.py --tier persistent

scripts/gpu_check.sh runs this under Nsight Compute when PROFILE=1.  It warms
up first (so the profiler's --launch-skip can step over the warm-up launches),
then runs --iters calls; it prints the median time per call with CUDA events
(meaningless under ncu, which serializes and replays kernels).
"""
import argparse
import os
import sys

import torch

# Run from a checkout with the extension built in place (gpu_check.sh does):
# the repository root, not scripts/, must be on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fusedrnn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import trace_gaps  # noqa: E402  (scripts/trace_gaps.py)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tier", choices=["auto", "general", "persistent"], default="auto")
    p.add_argument("--B", type=int, default=32)
    p.add_argument("--T", type=int, default=35)
    p.add_argument("--I", type=int, default=28)
    p.add_argument("--H", type=int, default=256)
    p.add_argument("--L", type=int, default=2)
    p.add_argument("--backward", action="store_true", help="forward+backward")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a fusedrnn.set_option for the run (repeatable), e.g. "
                        "persistent_fwd_task_units=2")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--torch-profile", action="store_true",
                   help="also print torch.profiler's table of the GPU kernels of --iters calls "
                        "(how much of a call's time the kernels take)")
    p.add_argument("--trace", metavar="PATH",
                   help="with --torch-profile: also write the profiled calls' timeline as a "
                        "Chrome trace (chrome://tracing, ui.perfetto.dev) and print where the "
                        "GPU waits within each call (scripts/trace_gaps.py)")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_step.py: needs a CUDA device")
    fusedrnn.set_option("cuda_tier", a.tier)
    for opt in a.option:
        name, sep, value = opt.partition("=")
        if not sep:
            raise SystemExit(f"profile_step.py: --option expects NAME=VALUE, got {opt!r}")
        fusedrnn.set_option(name, value)
    torch.manual_seed(0)
    lstm = fusedrnn.LSTM(a.I, a.H, a.L).cuda()
    x = torch.randn(a.T, a.B, a.I, device="cuda", requires_grad=a.backward)

    def call():
        if a.backward:
            out, _ = lstm(x)
            out.sum().backward()
        else:
            with torch.no_grad():
                lstm(x)

    for _ in range(a.warmup):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(a.iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    if a.torch_profile:
        from torch.profiler import ProfilerActivity, profile, record_function
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(a.iters):
                # One range per call, for trace_gaps.py; synchronized, as the
                # timed calls above, so that no call's GPU work overlaps the next.
                with record_function(trace_gaps.CALL_NAME):
                    call()
                torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15))
        if a.trace:
            prof.export_chrome_trace(a.trace)
            print(f"wrote {a.trace}")
            print(trace_gaps.summarize(trace_gaps.analyze(trace_gaps.load_events(a.trace))))
    print(f"tier={a.tier} B{a.B} T{a.T} I{a.I} H{a.H} L{a.L} "
          f"{'fwd+bwd' if a.backward else 'fwd'}: median {times[len(times) // 2]:.3f} ms")


if __name__ == "__main__":
    main()
