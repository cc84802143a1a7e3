"""Compressed updates: each codec's error bound, unbiased rounding, error feedback, and the wire."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord

from ffm.compression.codec import bound, decode, encode
from ffm.compression.mod import compress, decode_reply
from ffm.config import load_job
from ffm.errors import ConfigError
from ffm.runtime import run_local

CODECS = ("fp16", "bf16", "int8", "int4")


@pytest.mark.parametrize("codec", CODECS)
def test_a_compressed_update_decodes_within_its_quantization_bound(codec):
    x = torch.randn(37, 11) * 0.01
    got = decode("w", encode("w", x, codec, torch.Generator().manual_seed(0)), codec, x)
    assert got.shape == x.shape and got.dtype == x.dtype
    assert float((got - x).abs().max()) <= bound(x, codec) * (1 + 1e-6)
    assert float((got - x).abs().max()) > 0  # it is lossy: the test would see a codec that sends x as it is


@pytest.mark.parametrize("codec", ["int8", "int4"])
def test_stochastic_rounding_is_unbiased(codec):
    x = torch.linspace(-1, 1, 101)
    mean = torch.stack([decode("w", encode("w", x, codec, torch.Generator().manual_seed(s)), codec, x)
                        for s in range(400)]).mean(0)
    assert float((mean - x).abs().max()) < 0.2 * bound(x, codec)


def test_int4_packs_two_values_a_byte_and_topk_sends_its_share():
    x = torch.randn(1001)
    parts = encode("w", x, "int4", torch.Generator().manual_seed(0))
    assert parts["w"].dtype == torch.uint8 and parts["w"].numel() == 501
    top = encode("w", x, "topk", torch.Generator(), fraction=0.1)
    assert top["w"].numel() == 100 and set(top["w@index"].tolist()) == set(x.abs().topk(100).indices.tolist())


def test_error_feedback_makes_the_sum_over_rounds_unbiased_on_a_fixed_sequence():
    # A fixed toy sequence: the same update every round; top-1 of 4 entries always prefers the large one
    updates = [torch.tensor([5.0, 0.3, 0.2, -0.1]) for _ in range(400)]
    truth = torch.stack(updates).sum(0)
    sums = {}
    for feedback in (True, False):
        residual, total = None, torch.zeros(4)
        for t, update in enumerate(updates):
            parts, left = compress("w", update, residual, "topk", torch.Generator().manual_seed(t), 0.25)
            residual = left if feedback else None
            total += decode("w", parts, "topk", update)
        sums[feedback] = (total, residual)
    with_feedback, last_residual = sums[True]
    assert torch.allclose(with_feedback + last_residual, truth, rtol=1e-4)  # telescoping: nothing is lost
    assert float((with_feedback - truth).abs().max()) < 6.0  # the error stays one residual, whatever the rounds
    assert float((sums[False][0] - truth).abs().max()) > 100.0  # without feedback it grows every round


def test_the_server_rebuilds_the_trained_state_and_names_an_undecodable_update():
    sent = {"w": torch.zeros(3, 2), "steps": torch.tensor([4])}
    trained = torch.tensor([[0.1, -0.2], [0.3, 0.0], [0.05, 0.2]])
    parts = encode("w", trained, "int8", torch.Generator().manual_seed(0))
    rebuilt = decode_reply(sent, ArrayRecord({**parts, "steps": torch.tensor([4])}), "int8").to_torch_state_dict()
    assert float((rebuilt["w"] - trained).abs().max()) <= bound(trained, "int8") * (1 + 1e-6)
    with pytest.raises(ValueError, match="'w' is not a int8 update"):
        decode_reply(sent, ArrayRecord({"w": parts["w"], "steps": torch.tensor([4])}), "int8")


def test_compression_with_secure_aggregation_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"cannot run with privacy\.secure_aggregation") as info:
        load_job(None, ["client.compression=int8", "privacy.secure_aggregation=true"])
    assert "\n" not in str(info.value)


def test_an_int8_federation_sends_a_quarter_of_the_bytes_up_and_ends_near_the_uncompressed_one(job_factory):
    plain, _ = run_local(job_factory("plain", method__name="full"))
    small, _ = run_local(job_factory("int8", method__name="full", client__compression="int8"))
    assert small["bytes_down"] == plain["bytes_down"]
    assert 0.24 < small["bytes_up"] / plain["bytes_up"] < 0.27  # one byte an entry (+ a scale a tensor)
    assert small["rejected_updates"] == 0
    assert abs(small["final_test_loss"] - plain["final_test_loss"]) < 0.05
