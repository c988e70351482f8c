import pytest

from t2i_core.devices import NO_CPU_BF16_ENV, bf16_supported, glibc, resolve_precision, reusing_freed_memory


def test_the_no_bf16_switch_makes_auto_fp32_and_refuses_bf16(monkeypatch):
    monkeypatch.setenv(NO_CPU_BF16_ENV, "1")
    assert not bf16_supported("cpu")
    assert resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(ValueError, match=f"bf16 is not supported on cpu \\({NO_CPU_BF16_ENV} is set\\)"):
        resolve_precision("bf16", "cpu")


def test_without_the_switch_auto_follows_the_cpu(monkeypatch):
    monkeypatch.delenv(NO_CPU_BF16_ENV, raising=False)
    import torch
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert bf16_supported("cpu") == native
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", "cpu")


def page_faults_of(work) -> int:
    """Minor page faults this process takes while `work()` runs a second time in a thread of its own, as the
    server's training runs (a thread gets a glibc arena of its own; the first run fills it)."""
    import resource
    import threading
    counts = []

    def run():
        work()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        work()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return counts[0]


@pytest.mark.skipif(glibc() is None, reason="the heap thresholds are glibc's")
def test_a_training_heap_reuses_freed_activations_and_hands_them_back_after():
    import torch
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(32, 16, 3, padding=1))
    x = torch.randn(8, 16, 32, 32)  # activations of 1 to 2 MB each, taken and freed by every step

    def steps():
        for _ in range(10):
            net(x).square().mean().backward()
    with reusing_freed_memory():
        with reusing_freed_memory():  # a second training at the same time
            pass
        kept = page_faults_of(steps)  # still inside the first one: each step reuses the last one's pages
    after = page_faults_of(steps)
    pages_per_step = 10 * (8 * 32 * 32 * 32 * 4) // 4096  # ten activations of the 32-channel map's size, about
    assert kept < pages_per_step, f"{kept} page faults for 10 steps inside reusing_freed_memory"
    assert after > 2 * pages_per_step, f"only {after} page faults for 10 steps after it: the defaults are not back"
