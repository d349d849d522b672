"""Quantization recipe tags (the card's ``quant_recipe``) and the float-node choice, without quantizing."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("torch")  # the train extra: absent from the lowest-versions run (make test-lowest)

from tools.model.pipeline import ALL_RECIPES, parse_recipes
from tools.model.quantize import METHODS, QuantVariant, float_nodes


def test_every_tag_round_trips() -> None:
    for method, fmt, act, r7, f1 in itertools.product(METHODS, ("qdq", "qoperator"), ("u8", "s8"),
                                                      (False, True), (False, True)):
        v = QuantVariant(method, fmt, act, r7, f1)
        assert QuantVariant.from_tag(v.tag) == v


@pytest.mark.parametrize("tag", ["", "minmax", "minmax-qdq", "minmax-qdq-u8", "foo-qdq-u8s8",
                                 "minmax-qdq-u8s8-r8", "minmax-onnx-u8s8"])
def test_malformed_tags_are_refused(tag: str) -> None:
    with pytest.raises(ValueError):
        QuantVariant.from_tag(tag)


def test_recipe_list_parses_flags_in_any_order() -> None:
    assert parse_recipes("qdq:u8,qoperator:u8:r7:f1,qdq:s8:f1:r7") == [
        ("qdq", "u8", False, False), ("qoperator", "u8", True, True), ("qdq", "s8", True, True)]
    assert ("qoperator", "u8", True, True) in parse_recipes(ALL_RECIPES)


def test_float_first_keeps_only_the_first_conv_in_float(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((2, 1, 3, 3), np.float32), "w1")
    w2 = numpy_helper.from_array(np.zeros((2, 2, 3, 3), np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv_a"),
             helper.make_node("Conv", ["a", "w2"], ["b"], name="conv_b"),
             helper.make_node("Flatten", ["b"], ["c"], name="flat"),
             helper.make_node("Softmax", ["c"], ["y"], name="soft")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])], [w, w2])
    path = tmp_path / "two_convs.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert float_nodes(path, QuantVariant()) == ["soft"]
    assert float_nodes(path, QuantVariant(float_first=True)) == ["soft", "conv_a"]


@pytest.mark.parametrize("spec", ["qdq:u8:r8", "qdq", "foo:u8", "qdq:x8", "qoperator:u8,qdq:u8:f2"])
def test_malformed_recipes_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="--recipes"):
        parse_recipes(spec)
