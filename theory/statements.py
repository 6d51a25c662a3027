"""Every statement the suite knows, established for one normaliser.

Each statement module (`gradient_formula`, `activation_bound`, ...) exposes
`establish(derivation, concrete_evidence) -> {claim_id: ClaimResult}`; a new statement is one more
module in `STATEMENT_MODULES`. Statements typed as the paper prints them are the claims under test;
their left sides always come from `derive`. For a normaliser without a symbolic-m closed form
(`derive` raises NoClosedForm: l1, l-inf), only modules that also expose
`establish_concrete(normaliser, reason)` contribute, with evidence from concrete m (general_m false).
A module whose results depend on less than the whole normaliser declares it as `RESULT_KEY(normaliser)`;
its results are then computed once per key (LayerNorm, GroupNorm, l2 share BatchNorm's formula).
"""

from __future__ import annotations

import dataclasses

from theory import (
    activation_bound,
    gradient_formula,
    initialisation,
    rescaling,
    smoothness,
    weight_space,
    weight_space_analogues,
)
from theory.batch_algebra import NoClosedForm
from theory.cache import cached
from theory.claims import ClaimResult, Status  # noqa: F401 - re-exported
from theory.concrete import agreement_at_points
from theory.derive import Derivation, derive
from theory.normaliser import Normaliser

CONCRETE_SIZES = tuple(range(2, 9))
STATEMENT_MODULES = (gradient_formula, activation_bound, smoothness, rescaling, weight_space, weight_space_analogues,
                     initialisation)


def concrete_evidence(derivation: Derivation) -> tuple[tuple[int, ...], str]:
    """(sizes where the concrete-m route agrees exactly, a one-line description)."""
    rows = [agreement_at_points(derivation, size) for size in CONCRETE_SIZES]
    good = tuple(r["m"] for r in rows if r["jacobian_agree"] == r["points"] == r["grad_sq_norm_agree"])
    points = sum(r["points"] for r in rows)
    text = (f"concrete-m route (statistics written out for each m, differentiated exactly) agrees exactly at {points} rational points "
            f"for m = {', '.join(map(str, good))}")
    return good, text


_SHARED: dict = {}


def _module_results(module, derivation: Derivation, concrete) -> dict[str, ClaimResult]:
    """module.establish(derivation, concrete), shared in this process between normalisers with equal
    `module.RESULT_KEY(normaliser)` (what the module declares its results depend on, e.g. the formula alone)
    and relabelled with each normaliser's name; a module that declares no RESULT_KEY is always run."""
    key_of = getattr(module, "RESULT_KEY", None)
    if key_of is None:
        return module.establish(derivation, concrete)
    key = (module.__name__, key_of(derivation.normaliser))
    if key not in _SHARED:
        _SHARED[key] = module.establish(derivation, concrete)
    return {claim: dataclasses.replace(result, normaliser=derivation.normaliser.name)
            for claim, result in _SHARED[key].items()}


def establish_all(normaliser: Normaliser) -> dict[str, ClaimResult]:
    """Every statement that applies to `normaliser`, keyed by claim id (cached on disk)."""
    return cached("claims", normaliser, lambda: _establish_all(normaliser))


def _establish_at_concrete_m(normaliser: Normaliser, reason: NoClosedForm) -> dict[str, ClaimResult]:
    """No symbolic-m closed form: each module that can check its statement at concrete m
    (`establish_concrete(normaliser, reason)`) does; the others have nothing to say (general_m false)."""
    results: dict[str, ClaimResult] = {}
    for module in STATEMENT_MODULES:
        if hasattr(module, "establish_concrete"):
            results.update(module.establish_concrete(normaliser, str(reason)))
    return results


def _establish_all(normaliser: Normaliser) -> dict[str, ClaimResult]:
    try:
        derivation = derive(normaliser)
    except NoClosedForm as error:  # l1, l-inf: statistics that are not polynomial batch sums
        return _establish_at_concrete_m(normaliser, error)
    concrete = concrete_evidence(derivation)
    results: dict[str, ClaimResult] = {}
    for module in STATEMENT_MODULES:
        results.update(_module_results(module, derivation, concrete))
    return results
