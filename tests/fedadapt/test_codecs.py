import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from fedadapt.codecs import CODECS, ErrorFeedback, decode, encode
from fedadapt.errors import ConfigError, DeltaError


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
    with pytest.raises(ConfigError, match="unknown codec 'int3'"):
        encode(delta, "int3")


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_delta_is_refused_not_zeroed(codec, bad):
    """int8 used to scale a NaN delta to zeros, so the server's NaN check never fired."""
    d = {"w": torch.tensor([0.5, bad, -0.25])}
    with pytest.raises(DeltaError, match="w: holds NaN or Inf") as e:
        encode(d, codec)
    assert e.value.reason == "non-finite"


def test_a_failed_encode_leaves_the_residual_as_it_was():
    ef = ErrorFeedback("int8")
    ef.encode({"w": torch.tensor([0.1, 0.0013, -0.0021])})
    before = {k: v.clone() for k, v in ef.residual.items()}
    assert before["w"].abs().max() > 0
    with pytest.raises(DeltaError, match="holds NaN or Inf"):
        ef.encode({"w": torch.tensor([float("nan"), 0.0, 0.0])})
    assert torch.equal(ef.residual["w"], before["w"])
    out = decode(ef.encode({"w": torch.zeros(3)}))  # the next round sends what was owed
    torch.testing.assert_close(out["w"], before["w"], atol=0.1 / 127, rtol=0)
    assert torch.isfinite(ef.residual["w"]).all()


def test_a_non_finite_residual_is_dropped_not_carried():
    """A residual loaded from a broken device file must not poison every later round."""
    ef = ErrorFeedback("int8")
    ef.residual = {"w": torch.tensor([float("nan"), 1.0])}
    out = decode(ef.encode({"w": torch.tensor([0.5, -0.5])}))
    torch.testing.assert_close(out["w"], torch.tensor([0.5, -0.5]))
    assert torch.isfinite(ef.residual["w"]).all()


def test_an_fp16_overflow_leaves_no_infinite_residual():
    ef = ErrorFeedback("fp16")
    data = ef.encode({"w": torch.tensor([1e6, 1.0])})  # 1e6 is inf in fp16
    assert torch.isinf(decode(data)["w"][0])  # the server's check sees it
    assert ef.residual == {}


@pytest.mark.parametrize(
    ("codec", "dtype"),
    [
        ("fp32", torch.int32),
        ("fp32", torch.float16),
        ("fp16", torch.float32),
        ("int8", torch.uint8),
    ],
)
def test_a_tensor_of_another_dtype_than_its_codec_is_refused(codec, dtype):
    blob = save({"w": torch.zeros(2, dtype=dtype)}, metadata={"codec": codec, "scales": '{"w": 1}'})
    with pytest.raises(DeltaError, match=f"w: {dtype} in a {codec} payload") as e:
        decode(blob)
    assert e.value.reason == "dtype"


@pytest.mark.parametrize("header", [b"[]", b'{"__metadata__": [1]}', b'{"__metadata__": "x"}'])
def test_a_header_that_is_not_an_object_is_malformed(header):
    data = len(header).to_bytes(8, "little") + header
    with pytest.raises(DeltaError, match="not a JSON object"):
        decode(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_decode_fuzz_only_clean_errors(data):
    with contextlib.suppress(DeltaError):
        decode(data)
