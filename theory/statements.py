"""Every statement the suite knows, established for one normaliser.

Each statement module (`gradient_formula`, `activation_bound`, ...) exposes
`establish(derivation, concrete_evidence) -> {claim_id: ClaimResult}`; a new statement is one more
module in `STATEMENT_MODULES`. Statements typed as the paper prints them are the claims under test;
their left sides always come from `derive`.
"""

from __future__ import annotations

from theory import activation_bound, gradient_formula, initialisation, rescaling, smoothness, weight_space
from theory.batch_algebra import NoClosedForm
from theory.cache import cached
from theory.claims import ClaimResult, Status  # noqa: F401 - re-exported
from theory.concrete import agreement_at_points
from theory.derive import Derivation, derive
from theory.normaliser import Normaliser

CONCRETE_SIZES = tuple(range(2, 9))
STATEMENT_MODULES = (gradient_formula, activation_bound, smoothness, rescaling, weight_space, initialisation)


def concrete_evidence(derivation: Derivation) -> tuple[tuple[int, ...], str]:
    """(sizes where the concrete-m route agrees exactly, a one-line description)."""
    rows = [agreement_at_points(derivation, size) for size in CONCRETE_SIZES]
    good = tuple(r["m"] for r in rows if r["jacobian_agree"] == r["points"] == r["grad_sq_norm_agree"])
    points = sum(r["points"] for r in rows)
    text = (f"concrete-m route (explicit sums, Matrix.jacobian) agrees exactly at {points} rational points "
            f"for m = {', '.join(map(str, good))}")
    return good, text


def establish_all(normaliser: Normaliser) -> dict[str, ClaimResult]:
    """Every statement that applies to `normaliser`, keyed by claim id (cached on disk)."""
    return cached("claims", normaliser, lambda: _establish_all(normaliser))


def _establish_all(normaliser: Normaliser) -> dict[str, ClaimResult]:
    try:
        derivation = derive(normaliser)
    except NoClosedForm as error:  # pragma: no cover - every shipped normaliser has a closed form so far
        raise NotImplementedError(f"{normaliser.name}: no symbolic-m closed form ({error})") from error
    concrete = concrete_evidence(derivation)
    results: dict[str, ClaimResult] = {}
    for module in STATEMENT_MODULES:
        results.update(module.establish(derivation, concrete))
    return results
