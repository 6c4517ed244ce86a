"""The ONNX Runtime runner, perplexity and latency on a hand-built graph with an exact reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import toy_onnx

from hf_compress.onnx_eval import onnx_latency, onnx_perplexity
from hf_compress.onnx_session import OnnxCausalLM


@pytest.fixture(params=["optimum", "transformers"])
def toy(request, tmp_path) -> OnnxCausalLM:
    return OnnxCausalLM(
        toy_onnx.build(tmp_path / "toy.onnx", request.param), config={"vocab_size": toy_onnx.VOCAB}
    )


def test_prefill_logits_match_reference(toy):
    ids = np.array([[3, 7, 1, 9, 4, 4, 0]])
    got = toy.logits(ids).double().numpy()
    np.testing.assert_allclose(got, toy_onnx.reference_logits(ids), atol=1e-4)


def test_cached_steps_equal_a_full_prefill(toy):
    ids = np.array([[5, 2, 8, 13, 21]])
    _, cache = toy.forward(ids[:, :2])
    step, cache = toy.forward(ids[:, 2:4], cache)
    last, cache = toy.forward(ids[:, 4:], cache)
    full = toy.logits(ids).numpy()
    np.testing.assert_allclose(step, full[:, 2:4], atol=1e-5)
    np.testing.assert_allclose(last, full[:, 4:], atol=1e-5)
    assert cache[0].shape == (1, 1, 5, toy_onnx.WIDTH)


def test_greedy_generation_follows_the_reference(toy):
    ids = np.array([[11, 3]])
    out = toy.generate(ids, 5).numpy()
    seq = ids.copy()
    for _ in range(5):
        nxt = toy_onnx.reference_logits(seq)[:, -1].argmax(-1)[:, None]
        seq = np.concatenate([seq, nxt], axis=1)
    np.testing.assert_array_equal(out, seq)


def test_generation_stops_at_eos(toy):
    ids = np.array([[11, 3]])
    first = int(toy_onnx.reference_logits(ids)[0, -1].argmax())
    assert toy.generate(ids, 5, eos_token_id=first).shape[1] == 3


def test_perplexity_uses_the_pytorch_protocol(tmp_path, toy):
    from tiny_models import tiny_tokenizer

    from hf_compress.calibration import evaluation_plan

    tokenizer = tiny_tokenizer()
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n" * 40, encoding="utf-8")
    result = onnx_perplexity(toy, tokenizer, str(text), seqlen=16, max_windows=3, progress=False)
    assert (result.protocol.n_windows, result.protocol.seqlen, result.protocol.n_tokens) == (3, 16, 45)
    windows, labels, _ = evaluation_plan(tokenizer, str(text), seqlen=16, max_windows=3)
    logits = torch.from_numpy(toy_onnx.reference_logits(windows.numpy()))
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, toy_onnx.VOCAB), labels[:, 1:].reshape(-1)
    )
    assert math.isclose(result.ppl, math.exp(float(nll)), rel_tol=1e-4)


def test_latency_reports_prefill_and_decode(toy):
    result = onnx_latency(toy, prompt_tokens=8, new_tokens=4, repeats=1, warmup=0)
    assert result["prefill_ms"] > 0 and result["decode_tokens_per_s"] > 0
    assert result["prompt_tokens"] == 8 and result["threads"] >= 1


def test_latency_rejects_bad_sizes(toy):
    with pytest.raises(ValueError, match="new_tokens=0"):
        onnx_latency(toy, new_tokens=0)


def test_a_graph_without_logits_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input_ids"], ["out"])],
        "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, ["b", "s"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "x.onnx"))
    with pytest.raises(ValueError, match="not a causal-LM graph"):
        OnnxCausalLM(tmp_path / "x.onnx", config={})


def test_missing_graph_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ONNX graph"):
        OnnxCausalLM(tmp_path / "nope.onnx")
