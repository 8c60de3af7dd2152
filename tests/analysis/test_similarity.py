import json

import pytest
import torch

from workbench.analysis.similarity import cosine, cosine_pairs, cosine_table, layer_cosine_table, method_cosines
from workbench.core.vector import SteeringVector, full_hook_name


def sv(t, layer=1):
    return SteeringVector(torch.as_tensor(t, dtype=torch.float32), full_hook_name(layer))


def test_exact_values_self_orthogonal_negation():
    e = torch.eye(8)
    v = torch.randn(8)
    res = cosine_table({"v": sv(v), "neg": sv(-v), "e0": e[0], "e1": e[1]})
    assert res.kind == "cosine" and res["labels"] == ["v", "neg", "e0", "e1"]
    table = res.table()
    assert table.loc["v", "v"] == 1.0
    assert table.loc["v", "neg"] == -1.0
    assert table.loc["e0", "e1"] == 0.0
    assert cosine(e[0], 3 * e[0]) == 1.0
    assert torch.allclose(torch.tensor(table.to_numpy()), torch.tensor(table.to_numpy()).T)
    assert list(table.index) == ["v", "neg", "e0", "e1"]


def test_matches_torch_and_pairs_long_form():
    a, b, c = torch.randn(3, 16)
    pairs = cosine_pairs({"a": a, "b": b, "c": c})
    assert list(zip(pairs.a, pairs.b)) == [("a", "b"), ("a", "c"), ("b", "c")]
    want = torch.nn.functional.cosine_similarity(a, c, dim=0)
    assert pairs.cosine[1] == pytest.approx(float(want), abs=1e-6)


def test_method_and_layer_tables():
    caa = {layer: sv(torch.randn(8), layer) for layer in range(3)}
    bipo = {0: sv(2 * caa[0].vector, 0), 2: sv(-caa[2].vector, 2), 5: sv(torch.randn(8), 5)}
    res = method_cosines(bipo, caa, names=("bipo", "caa"))
    assert res.kind == "cosine_methods"
    t = res.table()
    assert list(t.layer) == [0, 2]
    assert t.cosine.tolist() == pytest.approx([1.0, -1.0])
    assert t.norm_bipo[0] == pytest.approx(2 * caa[0].norm, rel=1e-6)
    res = layer_cosine_table({2: caa[2], 0: caa[0], 1: caa[1]})
    lt = res.table()
    assert list(lt.index) == [0, 1, 2] and lt.loc[1, 1] == 1.0
    d = json.loads(json.dumps(res.with_info(behavior="power")))
    assert list(d) == ["kind", "schema_version", "behavior", "labels", "matrix"]
    assert d["kind"] == "cosine" and d["behavior"] == "power"
    assert d["labels"] == [0, 1, 2] and d["matrix"][0][0] == 1.0


def test_errors():
    with pytest.raises(ValueError, match="'z' is zero"):
        cosine_table({"a": torch.ones(4), "z": torch.zeros(4)})
    with pytest.raises(ValueError, match="different d_model"):
        cosine_table({"a": torch.ones(4), "b": torch.ones(5)})
    with pytest.raises(ValueError, match="no layer in common"):
        method_cosines({0: torch.ones(4)}, {1: torch.ones(4)})
    with pytest.raises(ValueError, match="no vectors"):
        cosine_table({})
