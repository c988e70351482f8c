import pytest

from t2i_core.devices import NO_CPU_BF16_ENV, bf16_supported, resolve_precision


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
