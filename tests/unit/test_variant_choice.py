"""The variant choice with real onnxruntime sessions: gate, pin, timing rule and the per-CPU cache.

Never asserts which variant is faster on this host: where the rule itself is tested, the timings are
given; where real timing runs, only the invariants are checked (a refused variant never serves).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.inference import LoadedModel, ModelError, evaluate_golden, load_golden
from agent.inference import choice as choice_mod
from agent.inference.choice import AUTO, Candidate, ChoiceCache, NoVariant, Refused, choose
from agent.inference.golden import GoldenResult
from agent.inference.serving import choose_variant, timing_frame
from agent.inference.timing import Timing, cpu_identity, time_models
from agent.inference.variants import read_model_set
from agent.preprocess import Preprocessor
from tests.helpers.models import make_model, make_variant_set

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def variant_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("set")
    bad = make_model(d / "bad-src.onnx")  # well-formed, tiny (likely the fastest), bad at digits
    return make_variant_set(d, extra={"tiny": bad})


def _judge(card: Path, floor: float = 0.97) -> tuple[Any, np.ndarray]:
    models = read_model_set(card)
    golden = load_golden(card.parent / "golden.npz")
    pre = Preprocessor.from_card(models.card, 64)

    def judge(m: LoadedModel) -> GoldenResult:
        r = evaluate_golden(m, golden, pre)
        if r.accuracy < floor:
            raise Refused(f"accuracy {r.accuracy:.3f}", r.accuracy)
        return r
    return judge, timing_frame(golden, pre)


def test_a_variant_failing_the_gate_never_serves(variant_set: Path, tmp_path: Path) -> None:
    judge, frame = _judge(variant_set)
    c = choose_variant(read_model_set(variant_set), judge, frame, 4, seconds_each=0.02, state_dir=str(tmp_path))
    rows = {r.name: r for r in c.rows}
    assert c.how == "fastest" and c.model.variant in ("int8", "fp32")
    assert rows["tiny"].verdict.startswith("refused") and not rows["tiny"].served
    assert rows["tiny"].accuracy is not None and rows["tiny"].accuracy < 0.97
    assert {n for n, r in rows.items() if r.p50_us is not None} >= {"int8", "fp32"}
    assert sum(r.served for r in c.rows) == 1 and rows[c.model.variant].served
    assert c.model.choice["variant"] == c.model.variant and "tiny" in c.model.choice["refused"]
    table = c.table()
    assert "tiny" in table and f"serving variant {c.model.variant}" in table


def test_the_lowest_median_serves(variant_set: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    judge, frame = _judge(variant_set)

    def fake(models: dict[str, LoadedModel], *_: Any, **__: Any) -> dict[str, Timing]:
        # fp32: fast median, awful tail; int8: slower median. The median decides.
        return {"int8": Timing("int8", np.array([50_000] * 9 + [60_000]), 1),
                "fp32": Timing("fp32", np.array([40_000] * 9 + [9_000_000]), 1)}

    monkeypatch.setattr(choice_mod, "time_models", fake)
    c = choose_variant(read_model_set(variant_set), judge, frame, 4)
    assert c.model.variant == "fp32" and c.how == "fastest"


def test_pin_serves_that_variant_still_gated(variant_set: Path) -> None:
    judge, frame = _judge(variant_set)
    models = read_model_set(variant_set)
    c = choose_variant(models, judge, frame, 4, pin="int8")
    assert (c.model.variant, c.how) == ("int8", "pinned")
    with pytest.raises(NoVariant, match=r"inference\.variant = 'tiny': that variant refused"):
        choose_variant(models, judge, frame, 4, pin="tiny")
    with pytest.raises(NoVariant, match=r"inference\.variant = 'int4': the model has no such variant"):
        choose_variant(models, judge, frame, 4, pin="int4")


def test_nothing_passes(variant_set: Path) -> None:
    judge, frame = _judge(variant_set, floor=1.01)
    with pytest.raises(NoVariant, match="no variant passes: int8 refused"):
        choose_variant(read_model_set(variant_set), judge, frame, 4)


def _cands(shas: dict[str, str], calls: list[str]) -> list[Candidate]:
    model = LoadedModel.load(REPO / "models" / "digit.int8.onnx", 1, {})
    golden = GoldenResult(1.0, 1, 10.0, 20.0, True)

    def gate(name: str) -> Any:
        def g() -> tuple[LoadedModel, GoldenResult]:
            calls.append(name)
            m = LoadedModel.load(model.path, 1, {})
            return m, golden
        return g
    return [Candidate(n, s, gate(n)) for n, s in shas.items()]


def test_cache_hit_and_a_miss_on_each_key_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    timed: list[int] = []
    real = choice_mod.time_models

    def counting(*a: Any, **k: Any) -> dict[str, Timing]:
        timed.append(1)
        return real(*a, **k)

    monkeypatch.setattr(choice_mod, "time_models", counting)
    cache = ChoiceCache(tmp_path / "variant-choice.json")
    frame = np.zeros((1, 28, 28), np.float32)
    shas = {"int8": "a" * 64, "fp32": "b" * 64}

    def run(shas: dict[str, str] = shas) -> str:
        calls: list[str] = []
        c = choose(_cands(shas, calls), frame, AUTO, 0.005, cache)
        assert sorted(calls) == sorted(shas)  # every variant is gated, cached or not
        return c.how

    assert run() == "fastest" and len(timed) == 1
    assert run() == "cached" and len(timed) == 1  # restart: no new measurement
    assert run({"int8": "a" * 64, "fp32": "c" * 64}) == "fastest" and len(timed) == 2  # a file changed
    monkeypatch.setattr(choice_mod, "cpu_identity", lambda: "another CPU")
    assert run() == "fastest" and len(timed) == 3
    monkeypatch.setattr(choice_mod.ort, "__version__", "0.0.1")
    assert run() == "fastest" and len(timed) == 4
    assert run() == "cached" and len(timed) == 4
    doc = json.loads(cache.path.read_text())
    assert {e["key"]["onnxruntime"] for e in doc["entries"]} >= {"0.0.1"}


def test_unwritable_or_corrupt_cache_measures_and_serves(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text("{not json")
    calls: list[str] = []
    frame = np.zeros((1, 28, 28), np.float32)
    c = choose(_cands({"a": "1" * 64, "b": "2" * 64}, calls), frame, AUTO, 0.005, ChoiceCache(tmp_path / "c.json"))
    assert c.how == "fastest"
    blocked = tmp_path / "file"
    blocked.write_text("x")
    c = choose(_cands({"a": "1" * 64, "b": "2" * 64}, calls), frame, AUTO, 0.005,
               ChoiceCache(blocked / "sub" / "c.json"))  # parent is a file: cannot write
    assert c.how == "fastest"


def test_timing_is_interleaved_and_counts_cpu(tmp_path: Path) -> None:
    a = LoadedModel.load(make_model(tmp_path / "a.onnx"), 1, {})
    b = LoadedModel.load(make_model(tmp_path / "b.onnx", "slow", slow_steps=5), 1, {})
    t = time_models({"a": a, "b": b}, np.zeros((1, 28, 28), np.float32), 0.01)
    assert t["a"].runs == t["b"].runs >= 3 * 16  # same number of batches: round-robin
    assert all(x.cpu_ns > 0 and x.p99_us >= x.p50_us > 0 for x in t.values())


def test_cpu_identity_is_stable_and_names_the_architecture() -> None:
    import platform
    assert cpu_identity() == cpu_identity() and platform.machine() in cpu_identity()


def test_single_file_models_are_one_variant_sets(tmp_path: Path) -> None:
    card = json.loads((REPO / "models" / "digit.card.json").read_text())
    int8 = next(v for v in card.pop("variants") if v["name"] == "int8")
    (tmp_path / "old.onnx").write_bytes((REPO / "models" / int8["file"]).read_bytes())
    (tmp_path / "old.card.json").write_text(json.dumps({**card, "file": "old.onnx", "sha256": int8["sha256"],
                                                        "quant_format": int8["quant_format"]}))
    old = read_model_set(tmp_path / "old.card.json")  # a card from before variants: one file
    assert old.names == ["int8"] and old.variants[0].path == tmp_path / "old.onnx"
    bare = read_model_set(tmp_path / "old.onnx")  # a bare .onnx, its card beside it
    assert bare.names == ["int8"] and bare.version == old.version
    other = read_model_set(make_model(tmp_path / "m.onnx"))  # no card at all: named after the file
    assert other.names == ["m"]


@pytest.mark.parametrize(("variants", "needle"), [
    ([], r"variants must be a list of 1 to 8"),
    ([{"name": "a", "file": "x.onnx"}, {"name": "a", "file": "y.onnx"}], r"variants\[1\]\.name 'a' appears twice"),
    ([{"name": "a", "file": "../x.onnx"}], r"variants\[0\]\.file must be a relative path"),
    ([{"name": "a b", "file": "x.onnx"}], r"variants\[0\]\.name must match"),
    ([{"name": "a", "file": "x.onnx", "sha256": "XYZ"}], r"variants\[0\]\.sha256 must be 64"),
])
def test_bad_variant_lists_name_the_key(tmp_path: Path, variants: list[Any], needle: str) -> None:
    card = tmp_path / "m.card.json"
    card.write_text(json.dumps({"version": 1, "variants": variants}))
    with pytest.raises(ModelError, match=needle):
        read_model_set(card)


def test_a_variant_whose_file_differs_from_its_card_is_refused(variant_set: Path, tmp_path: Path) -> None:
    import shutil
    d = tmp_path / "s"
    shutil.copytree(variant_set.parent, d)
    (d / "digit.fp32.onnx").write_bytes((d / "digit.int8.onnx").read_bytes())  # swapped behind the card
    judge, frame = _judge(d / "digit.card.json")
    c = choose_variant(read_model_set(d / "digit.card.json"), judge, frame, 4, seconds_each=0.01)
    rows = {r.name: r for r in c.rows}
    assert rows["fp32"].verdict == "refused: digit.fp32.onnx: sha256 differs from the card's"
    assert c.model.variant == "int8" and c.how == "only"


def test_load_preferred_follows_pin_then_cache_then_the_card_order(variant_set: Path, tmp_path: Path) -> None:
    from agent.inference.serving import load_preferred

    models = read_model_set(variant_set)
    first = models.variants[0].name
    assert load_preferred(models, 1, state_dir=str(tmp_path)).choice["how"].startswith("first listed")
    assert load_preferred(models, 1, state_dir=str(tmp_path)).variant == first
    judge, frame = _judge(variant_set)
    c = choose_variant(models, judge, frame, 1, seconds_each=0.01, state_dir=str(tmp_path))  # writes the cache
    cached = load_preferred(models, 1, state_dir=str(tmp_path))  # no gate, no timing: what was chosen here
    assert (cached.variant, cached.choice["how"]) == (c.model.variant, "cached")
    assert load_preferred(models, 1, pin="tiny").variant == "tiny"  # a pin is obeyed as given


def test_card_for_file_finds_a_variant_in_its_set_card(variant_set: Path, tmp_path: Path) -> None:
    from agent.inference.variants import card_for_file

    card = card_for_file(variant_set.parent / "digit.fp32.onnx")  # no digit.fp32.card.json beside it
    assert card["variant"] == "fp32" and "normalisation" in card and card["file"] == "digit.fp32.onnx"
    lone = make_model(tmp_path / "lone.onnx")
    assert card_for_file(lone) == {}
