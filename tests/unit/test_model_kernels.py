"""The model's compute budget and the onnxruntime kernel rules the channel counts were chosen by."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.model.kernels import fp32_path, int8_path, kernel_table


def test_fp32_nchwc_rules() -> None:
    assert fp32_path(1, 16, 8) == "NchwcConv (NCHW input)"  # C_in below the block: NCHW input read directly
    assert fp32_path(16, 32, 16) == "NchwcConv (NCHWc)"
    assert fp32_path(24, 32, 16).startswith("im2col")  # 24 >= 16 and not a multiple of it
    assert fp32_path(32, 10, 8) == "NchwcConv (NCHWc), 6 padding channels"


def test_int8_symmetric_conv_rules() -> None:
    assert int8_path(16, 32, 3, "AVX2") == "symmetric indirect conv"
    assert int8_path(16, 8, 3, "AVX2").startswith("im2col")  # C_out < 16
    assert int8_path(16, 24, 3, "AVX2") == "symmetric indirect conv"
    assert int8_path(16, 20, 3, "AVX2").startswith("im2col") and int8_path(16, 20, 3, "AVX-512") == (
        "symmetric indirect conv")  # C_out % 8 on AVX2, % 4 on AVX-512
    assert int8_path(6, 32, 3, "AVX-512").startswith("im2col")  # C_in % 4
    assert int8_path(32, 32, 3, "ARM64 dot").startswith("im2col")  # ARM64: C_in >= 64 only
    assert int8_path(64, 32, 3, "ARM64 dot") == "symmetric indirect conv"
    assert int8_path(64, 32, 1, "ARM64 dot").startswith("im2col")


def test_table_marks_the_float_first_conv() -> None:
    layers = [{"c_in": 1, "c_out": 16, "kernel": 3, "stride": 2, "out_side": 13, "macs": 24336},
              {"c_in": 16, "c_out": 32, "kernel": 3, "stride": 2, "out_side": 6, "macs": 165888}]
    rows = kernel_table(layers, float_first=True)
    assert rows[0]["int8 AVX2"].startswith("float") and rows[1]["int8 AVX2"] == "symmetric indirect conv"
    assert not kernel_table(layers, float_first=False)[0]["int8 AVX2"].startswith("float")


def test_conv_macs_of_known_nets() -> None:
    pytest.importorskip("torch")
    from tools.model.net import conv_layers, conv_macs

    assert conv_macs("t12w") == 1_381_816  # the previous shipped net (1.38 M)
    # 28 -> 13 -> 6 -> 4 with valid 3x3 convs, stride 2, 2, 1; then the 1x1 head.
    assert [r["out_side"] for r in conv_layers("s16")] == [13, 6, 4, 1]
    assert conv_macs("s16") == 13 * 13 * 16 * 9 + 6 * 6 * 32 * 16 * 9 + 4 * 4 * 32 * 32 * 9 + 32 * 10


def test_architecture_choice_uses_validation_figures_within_budgets() -> None:
    pytest.importorskip("torch")
    from tools.model.search import choose_arch

    rows = [
        {"arch": "big", "conv_macs": 900_000, "int8_size_bytes": 9000, "int8_val_acc": 0.999, "epochs": 12},
        {"arch": "fat", "conv_macs": 300_000, "int8_size_bytes": 20000, "int8_val_acc": 0.998, "epochs": 12},
        {"arch": "a", "conv_macs": 350_000, "int8_size_bytes": 15000, "int8_val_acc": 0.9940, "epochs": 12},
        {"arch": "b", "conv_macs": 250_000, "int8_size_bytes": 12000, "int8_val_acc": 0.9937, "epochs": 20},
        {"arch": "b", "conv_macs": 250_000, "int8_size_bytes": 12000, "int8_val_acc": 0.9936, "epochs": 12},
        {"arch": "c", "conv_macs": 200_000, "int8_size_bytes": 10000, "int8_val_acc": 0.9920, "epochs": 12},
    ]
    best = choose_arch(rows)  # within 0.05 pt of the best that fits, fewer MACs, then fewer epochs
    assert (best["arch"], best["epochs"]) == ("b", 12)
    assert choose_arch(rows[:4])["epochs"] == 20
    with pytest.raises(ValueError, match="no candidate"):
        choose_arch(rows[:2])


def test_search_rows_are_read_per_arch_and_epochs(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from tools.model.search import load_search

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"arch": "p8", "epochs": 12, "v": 1}\n{"arch": "p8", "epochs": 12, "v": 2}\n')
    b.write_text('{"arch": "p8", "epochs": 20, "v": 3}\n\n')
    assert [r["v"] for r in load_search(a, b)] == [2, 3]  # a re-run replaces its row
    b.write_text('{"arch": "p8"}\n')
    with pytest.raises(ValueError, match=r"b\.jsonl:1"):
        load_search(b)
