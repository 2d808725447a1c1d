"""Precision by hardware: what a training run gets when its config names none, and the --dtype of sampling."""

from __future__ import annotations

import pytest
import torch

from unitok.precision import cpu_flags, cpu_has_fast_bf16, fast_dtype, training_precision

AVX2_ONLY = frozenset({"fma", "avx2", "f16c"})
AVX512_BF16 = frozenset({"avx2", "avx512f", "avx512_bf16"})
AMX = frozenset({"avx2", "avx512f", "amx_tile", "amx_bf16"})


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 amx_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_bf16_only_where_the_cpu_has_bf16_units():
    assert not cpu_has_fast_bf16(AVX2_ONLY)
    assert cpu_has_fast_bf16(AVX512_BF16) and cpu_has_fast_bf16(AMX)
    assert fast_dtype("cpu", AVX2_ONLY) == torch.float32
    assert fast_dtype("cpu", AMX) == torch.bfloat16


def test_training_precision_follows_the_accelerator_and_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    precision, reason = training_precision("cpu", AVX2_ONLY)
    assert precision == "32-true" and "no bf16" in reason
    assert training_precision("auto", AMX)[0] == "bf16-mixed"
    assert training_precision(None, AVX512_BF16)[0] == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    precision, reason = training_precision("gpu", AVX2_ONLY)
    assert precision == "16-mixed" and "CUDA" in reason
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert training_precision("cuda", AVX2_ONLY)[0] == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_precision("cpu", AVX2_ONLY)[0] == "32-true"  # a CPU run on a GPU machine stays on the CPU's terms


def test_a_config_without_precision_gets_the_hardwares(monkeypatch, tmp_path):
    from tokenizer.training import run_tokenizer_cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["--config", "configs/tokenizer/shapes64.yaml", "--trainer.logger", "false",
            "--trainer.callbacks", "[]", "--trainer.default_root_dir", str(tmp_path)]
    for flags, expected in ((AVX2_ONLY, "32-true"), (AMX, "bf16-mixed")):
        monkeypatch.setattr("unitok.precision.cpu_flags", lambda flags=flags: flags)
        assert run_tokenizer_cli(args, run=False).trainer.precision == expected
    monkeypatch.setattr("unitok.precision.cpu_flags", lambda: AVX2_ONLY)
    named = run_tokenizer_cli([*args, "--trainer.precision", "bf16-mixed"], run=False)
    assert named.trainer.precision == "bf16-mixed"  # a config or flag that names one keeps it


def test_the_lms_sampling_dtype_follows_the_cpu_unless_asked(monkeypatch):
    from generation.runtime import dtype_reason, lm_dtype_for
    from unitok.errors import UserError

    cpu = torch.device("cpu")
    for flags in (AMX, AVX512_BF16):
        monkeypatch.setattr("unitok.precision.cpu_flags", lambda flags=flags: flags)
        assert lm_dtype_for(cpu) == lm_dtype_for(cpu, "auto") == torch.bfloat16
        assert lm_dtype_for(cpu, "float32") == torch.float32
        assert "has bf16 units" in dtype_reason(cpu, None) and dtype_reason(cpu, "float32") == "as asked"
    monkeypatch.setattr("unitok.precision.cpu_flags", lambda: AVX2_ONLY)
    assert lm_dtype_for(cpu) == lm_dtype_for(cpu, "auto") == torch.float32
    assert "no bf16 units" in dtype_reason(cpu, "auto")
    assert lm_dtype_for(cpu, "bfloat16") == lm_dtype_for(cpu, torch.bfloat16) == torch.bfloat16
    with pytest.raises(UserError, match="unknown dtype"):
        lm_dtype_for(cpu, "fp8")
