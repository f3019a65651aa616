"""Pure routing decisions: weighted split, deferral f(t), pre-routing hardness, stage order; KServe v2 helpers."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from paretoserve.workers.router.decisions import (
    choose_variant,
    defer_by_confidence,
    defer_by_discriminator,
    discriminator_score,
    fallback_variants,
    hardness,
    preroute,
    request_point,
    topological_order,
)
from paretoserve.workers.router.errors import BadRequest, UpstreamError
from paretoserve.workers.router.protocol import (
    assemble,
    column,
    confidence,
    image_rows,
    keep_outputs,
    parse_infer_request,
    select_rows,
)


def test_request_point_is_deterministic_and_uniform() -> None:
    assert request_point("req-1") == request_point("req-1")
    points = [request_point(f"req-{i}") for i in range(20_000)]
    assert all(0.0 <= p < 1.0 for p in points)
    deciles = Counter(int(p * 10) for p in points)
    assert all(1800 <= deciles[d] <= 2200 for d in range(10))


def test_weighted_split_is_deterministic_and_proportional() -> None:
    variants = [("a", 3.0), ("b", 1.0), ("never", 0.0)]

    chosen = Counter(choose_variant(variants, f"id-{i}") for i in range(20_000))

    assert choose_variant(variants, "same") == choose_variant(variants, "same")
    assert chosen["never"] == 0
    assert 0.72 <= chosen["a"] / 20_000 <= 0.78
    assert choose_variant([("only", 1.0)], "x") == "only"
    with pytest.raises(ValueError, match="positive total"):
        choose_variant([("a", 0.0), ("b", 0.0)], "x")


def test_fallback_variants_heaviest_first() -> None:
    assert fallback_variants([("a", 1.0), ("b", 5.0), ("c", 5.0), ("d", 2.0)], "b") == ["c", "d", "a"]


def test_confidence_router_defers_below_threshold_and_f_grows_with_t() -> None:
    confidence = [0.1, 0.5, 0.79, 0.8, 0.99, 1.0]

    assert defer_by_confidence(confidence, 0.8) == [True, True, True, False, False, False]
    shares = [sum(defer_by_confidence(confidence, t / 10)) for t in range(11)]
    assert shares == sorted(shares) and shares[0] == 0 and shares[-1] == 5


def test_discriminator_router_scores_one_minus_p_wrong() -> None:
    p_wrong = [0.9, 0.5, 0.05, 0.0]

    assert discriminator_score(0.25) == 0.75
    assert defer_by_discriminator(p_wrong, 0.6) == [True, True, False, False]
    shares = [sum(defer_by_discriminator(p_wrong, t / 20)) for t in range(21)]
    assert shares == sorted(shares) and shares[0] == 0 and shares[-1] == 3


def test_hardness_of_blank_thin_and_bold_digits() -> None:
    blank = [0.0] * 64
    thin = [1.0 if col == 4 and 1 <= row <= 6 else 0.0 for row in range(8) for col in range(8)]
    bold = [1.0 if 1 <= col <= 6 and (row in (1, 6) or col in (1, 6)) else 0.0 for row in range(8) for col in range(8)]

    assert hardness(blank) == 1.0  # nothing to read: hardest
    assert hardness(thin) > 0.6  # a faint one-column stroke
    assert hardness(bold) < 0.2  # a wide, high-contrast ring
    assert preroute([hardness(blank), hardness(thin), hardness(bold)], 0.5) == [True, True, False]
    with pytest.raises(ValueError, match="grid of width 8"):
        hardness([0.0] * 63)


def test_topological_order() -> None:
    assert topological_order({"c": ["a", "b"], "a": [], "b": ["a"]}) == ("a", "b", "c")
    assert topological_order({"x": [], "y": []}) == ("x", "y")
    with pytest.raises(ValueError, match="cycle"):
        topological_order({"a": ["b"], "b": ["a"]})
    with pytest.raises(ValueError, match="unknown stage 'z'"):
        topological_order({"a": ["z"]})


def _body(rows: int, **extra: object) -> bytes:
    data = [float(r * 100 + i) for r in range(rows) for i in range(64)]
    return orjson.dumps({"id": "r", "inputs": [{"name": "IMAGE", "shape": [rows, 8, 8], "datatype": "FP32",
                                                "data": data}], **extra})


def test_parse_infer_request_validates_tensors() -> None:
    request = parse_infer_request(_body(3))
    assert request.batch == 3 and request.request_id() == "r" and request.requested_outputs is None
    nested = orjson.dumps({"inputs": [{"name": "IMAGE", "shape": [1, 2], "datatype": "FP32", "data": [[1, 2]]}]})
    assert parse_infer_request(nested).message["inputs"][0]["data"] == [1, 2]
    for body, words in [
        (b"{", "not valid JSON"),
        (b"[1]", "must be a JSON object"),
        (b"{}", "inputs: must be a non-empty list"),
        (orjson.dumps({"inputs": [{"name": "IMAGE", "shape": [2, 8], "datatype": "FP32", "data": [0.0] * 15}]}),
         "inputs[0].data: 15 values do not fill shape [2, 8]"),
        (orjson.dumps({"inputs": [{"name": "IMAGE", "shape": [1, -8], "datatype": "FP32", "data": []}]}),
         "inputs[0].shape"),
        (orjson.dumps({"inputs": [{"name": "IMAGE", "shape": [1, 1], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 4}}]}), "binary tensor data"),
        (orjson.dumps({"inputs": [{"name": "A", "shape": [1, 1], "datatype": "FP32", "data": [1]},
                                  {"name": "B", "shape": [2, 1], "datatype": "FP32", "data": [1, 2]}]}),
         "inputs[1].shape: batch dimension 2"),
    ]:
        with pytest.raises(BadRequest, match=words.replace("[", r"\[").replace("]", r"\]")):
            parse_infer_request(body)


def test_select_rows_and_image_rows() -> None:
    request = parse_infer_request(_body(3, outputs=[{"name": "LABEL"}]))

    subset = orjson.loads(select_rows(request, [2, 0]))

    assert subset["inputs"][0]["shape"] == [2, 8, 8]
    assert subset["inputs"][0]["data"][:2] == [200.0, 201.0] and subset["inputs"][0]["data"][64] == 0.0
    assert "outputs" not in subset and subset["id"] == "r"
    assert orjson.loads(select_rows(request, [0, 1, 2])).get("outputs") is None  # all rows, all outputs
    plain = parse_infer_request(_body(2))
    assert select_rows(plain, [0, 1]) is plain.raw  # forwarded unchanged
    assert [row[0] for row in image_rows(request)] == [0.0, 100.0, 200.0]
    with pytest.raises(BadRequest, match="an input named 'PIXELS'"):
        image_rows(request, "PIXELS")


def _response(model: str, labels: list[int], conf: list[float]) -> dict[str, object]:
    n = len(labels)
    probs = [p for c in conf for p in [c, 1 - c]]
    return {"model_name": model, "outputs": [
        {"name": "PROBS", "datatype": "FP32", "shape": [n, 2], "data": probs},
        {"name": "CONFIDENCE", "datatype": "FP32", "shape": [n, 1], "data": conf},
        {"name": "LABEL", "datatype": "INT64", "shape": [n, 1], "data": labels}]}


def test_scores_from_responses() -> None:
    light = _response("light", [1, 2], [0.9, 0.3])

    assert confidence(light, "light") == [0.9, 0.3]
    assert column(light, "PROBS", 1, "light") == pytest.approx([0.1, 0.7])
    no_conf = {"outputs": [light["outputs"][0]]}  # type: ignore[index]
    assert confidence(no_conf, "light") == [0.9, 0.7]  # max of each PROBS row
    with pytest.raises(UpstreamError, match="no output 'SCORES'"):
        column(light, "SCORES", 0, "light")
    with pytest.raises(UpstreamError, match="has 2 columns"):
        column(light, "PROBS", 2, "light")


def test_assemble_stitches_rows_in_request_order() -> None:
    light = _response("light", [10, 11, 12], [0.9, 0.2, 0.95])
    heavy = _response("heavy", [21], [0.99])

    merged = assemble(3, [(light, [0, 1, 2], "light"), (heavy, [1], "heavy")])

    labels = next(t for t in merged["outputs"] if t["name"] == "LABEL")
    assert labels["data"] == [10, 21, 12] and labels["shape"] == [3, 1]
    probs = next(t for t in merged["outputs"] if t["name"] == "PROBS")
    assert probs["data"][2:4] == pytest.approx([0.99, 0.01])
    assert assemble(3, [(light, [0, 1, 2], "light")]) is light
    assert [t["name"] for t in keep_outputs(merged, ["LABEL"])["outputs"]] == ["LABEL"]
    assert keep_outputs(merged, None) is merged
