import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedadapt.codecs import ErrorFeedback, decode, encode
from fedadapt.errors import DeltaError


@pytest.fixture
def delta():
    torch.manual_seed(0)
    return {"x.lora_B.weight": torch.randn(384, 8) * 1e-3, "head.bias": torch.randn(2) * 1e-2}


def test_fp32_is_lossless_and_bytes_are_real(delta):
    data = encode(delta, "fp32")
    out = decode(data)
    assert all(torch.equal(out[k], delta[k]) for k in delta)
    payload = sum(v.numel() * 4 for v in delta.values())
    assert payload < len(data) < payload + 512  # tensors plus a small JSON header


def test_fp16_halves_bytes_with_small_error(delta):
    f32, f16 = encode(delta, "fp32"), encode(delta, "fp16")
    assert len(f16) < 0.55 * len(f32)
    out = decode(f16)
    for k, v in delta.items():
        assert (out[k] - v).abs().max() <= v.abs().max() * 2**-10


def test_int8_quarter_bytes_error_at_most_half_step(delta):
    f32, i8 = encode(delta, "fp32"), encode(delta, "int8")
    assert len(i8) < 0.3 * len(f32)
    out = decode(i8)
    for k, v in delta.items():
        step = v.abs().max() / 127
        assert (out[k] - v).abs().max() <= step / 2 + 1e-9


def test_error_feedback_carries_rounding_into_later_rounds():
    torch.manual_seed(1)
    ef = ErrorFeedback("int8")
    sent_total = torch.zeros(1000)
    true_total = torch.zeros(1000)
    for _ in range(20):
        d = {"w": torch.randn(1000) * 1e-3}
        d["w"][0] = 0.1  # one outlier makes every other entry round to a coarse step
        true_total += d["w"]
        sent_total += decode(ef.encode(d))["w"]
    # what is still owed is exactly the last residual, not 20 rounds of error
    torch.testing.assert_close(true_total - sent_total, ef.residual["w"], atol=1e-6, rtol=0)
    assert ef.residual["w"].abs().max() <= 0.1 / 127


def test_zero_tensor_round_trips_in_int8():
    out = decode(encode({"z": torch.zeros(3)}, "int8"))
    assert torch.equal(out["z"], torch.zeros(3))


@pytest.mark.parametrize(
    "data", [b"", b"12345678", b"\xff" * 8 + b"{}", b"\x02\x00\x00\x00\x00\x00\x00\x00{}"]
)
def test_malformed_payload_is_a_delta_error(data):
    with pytest.raises(DeltaError):
        decode(data)


def test_unknown_codec_is_refused(delta):
    with pytest.raises(ValueError, match="unknown codec"):
        encode(delta, "int3")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_decode_fuzz_only_clean_errors(data):
    with contextlib.suppress(DeltaError):
        decode(data)
