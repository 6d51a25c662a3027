"""One row per distinct statement: `same_statement_as`, `distinct_statement_counts`, `measured_check`.

LayerNorm, GroupNorm and l2 have BatchNorm's formula: every record a module establishes from the formula
alone (or from the formula and an axis they share) names the first registered normaliser with that key, and
the headline counts count it once. The counting helper is pure (theory.json in, counts out) and is tested on
a small hand-written file as well as on the shipped registry.
"""

from __future__ import annotations

import pytest
import sympy as sp

from theory.claims import MEASURED_CHECKS, Status
from theory.normalisers import REGISTRY
from theory.statements import distinct_statement_counts, establish_all


@pytest.fixture(scope="module")
def theory() -> dict:
    """theory.json's content for every shipped normaliser (disk-cached derivations)."""
    return {name: {claim: result.as_dict() for claim, result in establish_all(normaliser).items()}
            for name, normaliser in REGISTRY.items()}


def test_batchnorm_formula_records_name_batchnorm_as_the_same_statement(theory):
    for name in ("layernorm", "groupnorm", "lp2"):
        for claim in ("factC.1", "thm4.1", "thm4.1-printed", "thm4.2", "thm4.2b"):
            assert theory[name][claim]["same_statement_as"] == "batchnorm", (name, claim)
            assert {k: v for k, v in theory[name][claim].items() if k != "same_statement_as"} == {
                k: v for k, v in theory["batchnorm"][claim].items() if k not in ("same_statement_as", "numeric_crosscheck")}
    # the axis decides obs4.3's condition and thm4.4's form: l2 (batch axis) shares BatchNorm's, LayerNorm does not
    for claim in ("obs4.3", "thm4.4-per-unit", "thm4.4", "thm4.4-printed", "lem4.5", "lem4.5-repaired"):
        assert theory["lp2"][claim]["same_statement_as"] == "batchnorm", claim
    assert theory["layernorm"]["obs4.3"]["same_statement_as"] is None
    assert theory["layernorm"]["thm4.4-per-layer"]["same_statement_as"] == "groupnorm"
    assert all(r["same_statement_as"] is None for n in ("batchnorm", "lp1", "lpinf", "rmsnorm", "weightnorm")
               for r in theory[n].values())


def test_distinct_statement_counts_count_a_shared_statement_once():
    theory = {
        "a": {"thm4.1": {"status": "proved", "same_statement_as": None},
              "thm4.1-printed": {"status": "refuted", "same_statement_as": None}},
        "b": {"thm4.1": {"status": "proved", "same_statement_as": "a"},
              "obs4.3": {"status": "conditional", "same_statement_as": None}},
        "c": {"thm4.1": {"status": "proved", "same_statement_as": "missing"}},  # its owner is not in the file
    }
    counts = distinct_statement_counts(theory)
    assert counts == {"total": 4, "proved": 2, "checked": 0, "refuted": 1, "conditional": 1, "records": 5, "shared": 1}


def test_distinct_counts_on_the_shipped_registry(theory):
    counts = distinct_statement_counts(theory)
    records = sum(len(claims) for claims in theory.values())
    shared = sum(r["same_statement_as"] is not None for claims in theory.values() for r in claims.values())
    assert counts["records"] == records and counts["shared"] == shared and counts["total"] == records - shared
    assert counts["total"] == sum(counts[status.value] for status in Status)
    assert counts["shared"] >= 3 * 5  # LayerNorm, GroupNorm, l2 each repeat at least BatchNorm's five formula records


def test_every_record_says_what_a_measured_check_of_it_checks(theory):
    for name, claims in theory.items():
        for claim, record in claims.items():
            assert record["measured_check"] in MEASURED_CHECKS, (name, claim)
            if record["status"] == "refuted":
                assert record["measured_check"] == "refuted", (name, claim)
    bn = theory["batchnorm"]
    assert (bn["thm4.1"]["measured_check"], bn["factC.1"]["measured_check"]) == ("identity", "identity")
    assert (bn["thm4.2"]["measured_check"], bn["thm4.2b"]["measured_check"]) == ("conditional", "conditional")
    assert bn["thm4.4-per-unit"]["measured_check"] == "bound" and bn["obs4.3"]["measured_check"] == "bound"


def test_an_unknown_measured_check_is_rejected():
    from theory.claims import ClaimResult

    with pytest.raises(ValueError, match="measured_check 'sometimes' must be one of identity"):
        ClaimResult(claim="x", normaliser="n", status=Status.PROVED, general_m=True, statement_latex="", source="",
                    assumptions=(), evidence="", measured_check="sometimes")


def test_every_refuted_record_has_a_right_side_that_is_positive_somewhere(theory):
    """A refutation means something only if the right side is not <= 0 for every input: for each refuted record,
    an input where it is positive (at the attached counterexample, or at g orthogonal to 1 and yhat)."""
    import numpy as np

    from theory import numeric

    batch = np.array([0.0, 1.0, 3.0, -2.0])
    yhat = (batch - batch.mean()) / batch.std()
    grad = np.array([1.0, -1.0, 0.0, 0.0])
    grad -= grad.mean() + (grad @ yhat) / (yhat @ yhat) * yhat  # orthogonal to 1 and to yhat
    invariants = (float(grad @ grad), float(grad.sum()), float(grad @ yhat), 4, 1.0, float(batch.std()))
    positive_at = {
        "thm4.1-printed": lambda name: numeric.activation_bound("thm4.1-printed", name)(*invariants),
        "thm4.4-printed": lambda name: numeric.minimax_weight_bound("thm4.4-printed")(1.0, *invariants),
    }
    for name, claims in theory.items():
        for claim, record in claims.items():
            if record["status"] != "refuted":
                continue
            found = [c for c in record.get("counterexamples", [record.get("counterexample") or {}]) if "rhs" in c]
            at_counterexample = any(float(sp.sympify(c["rhs"])) > 0 for c in found)
            assert at_counterexample or positive_at[claim](name) > 0, (name, claim)
