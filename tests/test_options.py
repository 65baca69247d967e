"""fusedrnn.set_option / get_option: the process-wide kernel switches
(csrc/options.h).  Values are validated with clear errors, round-trip, and
CPU results do not depend on the CUDA switches."""
import pytest
import torch

from conftest import assert_raises, fusedrnn_or_skip

fusedrnn = fusedrnn_or_skip()

OPTIONS = {"cuda_tier": ("auto", "general", "persistent"),
           "cuda_step_launch": ("auto", "per_step", "graph"),
           "persistent_mma": ("auto", "off", "on"),
           "cuda_bidirectional": ("auto", "separate", "one_launch"),
           "persistent_bwd_split": ("auto", "off", "on"),
           "persistent_cta_epilogue": ("auto", "off", "on"),
           "persistent_threads": ("auto", "256", "512"),
           "persistent_fwd_task_units": ("auto", "1", "2", "regs")}


@pytest.fixture(autouse=True)
def restore_options():
    old = {n: fusedrnn.get_option(n) for n in OPTIONS}
    yield
    for n, v in old.items():
        fusedrnn.set_option(n, v)


def test_defaults_are_auto():
    # A fresh process starts on auto (this test may run after others that
    # restore what they set, so it checks the restored state too).
    for name in OPTIONS:
        assert fusedrnn.get_option(name) == "auto"


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_round_trip(name):
    for value in OPTIONS[name]:
        fusedrnn.set_option(name, value)
        assert fusedrnn.get_option(name) == value


def test_bad_names_and_values():
    assert_raises(ValueError, lambda: fusedrnn.set_option("cuda_teir", "auto"),
                  r"unknown option 'cuda_teir'", r"cuda_tier")
    assert_raises(ValueError, lambda: fusedrnn.get_option("nope"), r"unknown option 'nope'")
    assert_raises(ValueError, lambda: fusedrnn.set_option("cuda_tier", "fast"),
                  r"'cuda_tier' takes one of", r"persistent")
    assert fusedrnn.get_option("cuda_tier") == "auto"  # a refused value changes nothing
    # The native layer refuses out-of-range values on its own as well.
    assert_raises(ValueError, lambda: fusedrnn._C.set_option("cuda_tier", 7), r"\[0, 3\)")
    assert_raises(ValueError, lambda: fusedrnn._C.set_option("bogus", 0), r"unknown option")


def test_cpu_results_do_not_depend_on_cuda_switches():
    m = fusedrnn.LSTM(3, 5, 2)
    x = torch.randn(4, 2, 3)
    want, _ = m(x)
    fusedrnn.set_option("cuda_tier", "persistent")
    fusedrnn.set_option("cuda_step_launch", "graph")
    fusedrnn.set_option("persistent_mma", "on")
    fusedrnn.set_option("cuda_bidirectional", "one_launch")
    got, _ = m(x)
    assert torch.equal(got, want)
    bi = fusedrnn.LSTM(3, 5, 2, bidirectional=True)
    got, _ = bi(x)
    fusedrnn.set_option("cuda_bidirectional", "separate")
    assert torch.equal(got, bi(x)[0])
    got, _ = m.to(torch.bfloat16)(x.to(torch.bfloat16))
    fusedrnn.set_option("persistent_mma", "off")
    want, _ = m(x.to(torch.bfloat16))
    assert torch.equal(got, want)
