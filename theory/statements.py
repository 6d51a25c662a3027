"""Every statement the suite knows, established for one normaliser.

Each statement module (`gradient_formula`, `activation_bound`, ...) exposes
`establish(derivation, concrete_evidence) -> {claim_id: ClaimResult}`; a new statement is one more
module in `STATEMENT_MODULES`. Statements typed as the paper prints them are the claims under test;
their left sides always come from `derive`. For a normaliser without a symbolic-m closed form in batch
moments (`derive` raises NoClosedForm: l1, l-inf), `piecewise.derive_piecewise` derives one on a smooth
piece (sign pattern, active sample) and `PIECEWISE_MODULES` establish their statements from it; only when
that fails too do modules exposing `establish_concrete(normaliser, reason)` contribute, from concrete m
(general_m false).

A module whose results depend on less than the whole normaliser declares it as `RESULT_KEY(normaliser)`;
its results are then computed once per key (LayerNorm, GroupNorm, l2 share BatchNorm's formula) and every
normaliser after the first registered one with that key carries `same_statement_as` = that first one's
name: one statement, shown once and counted once (`distinct_statement_counts`).
"""

from __future__ import annotations

import dataclasses
import functools

from theory import (
    activation_bound,
    gradient_formula,
    initialisation,
    lp_bounds,
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
from theory.piecewise import agreement, derive_piecewise

CONCRETE_SIZES = tuple(range(2, 9))
STATEMENT_MODULES = (gradient_formula, activation_bound, smoothness, rescaling, weight_space, weight_space_analogues,
                     initialisation)
PIECEWISE_MODULES = (lp_bounds,)


def concrete_evidence(derivation: Derivation) -> tuple[tuple[int, ...], str]:
    """(sizes where the concrete-m route agrees exactly, a one-line description)."""
    rows = [agreement_at_points(derivation, size) for size in CONCRETE_SIZES]
    good = tuple(r["m"] for r in rows if r["jacobian_agree"] == r["points"] == r["grad_sq_norm_agree"])
    points = sum(r["points"] for r in rows)
    text = (f"concrete-m route (statistics written out for each m, differentiated exactly) agrees exactly at {points} rational points "
            f"for m = {', '.join(map(str, good))}")
    return good, text


def _registry() -> dict[str, Normaliser]:
    from theory.normalisers import REGISTRY  # late: the registry imports the normaliser modules

    return REGISTRY


@functools.cache  # keyed by the Normaliser object (identity): a formula key expands every statistic
def _key(key_of, normaliser: Normaliser):
    try:
        return key_of(normaliser)
    except ValueError:  # a normaliser the key does not apply to (e.g. an unknown axis word)
        return None


def first_with_key(key_of, normaliser: Normaliser) -> str:
    """The name of the first registered normaliser whose `key_of` equals `normaliser`'s (itself if none)."""
    key = key_of(normaliser)
    for other in _registry().values():
        if other is normaliser:
            break
        if _key(key_of, other) == key:
            return other.name
    return normaliser.name


_SHARED: dict = {}


def _module_results(module, derivation: Derivation, concrete) -> dict[str, ClaimResult]:
    """module.establish(derivation, concrete), shared in this process between normalisers with equal
    `module.RESULT_KEY(normaliser)` (what the module declares its results depend on, e.g. the formula alone)
    and relabelled with each normaliser's name; a module that declares no RESULT_KEY is always run."""
    key_of = getattr(module, "RESULT_KEY", None)
    if key_of is None:
        return module.establish(derivation, concrete)
    normaliser = derivation.normaliser
    key = (module.__name__, key_of(normaliser))
    if key not in _SHARED:
        _SHARED[key] = module.establish(derivation, concrete)
    owner = first_with_key(key_of, normaliser)
    return {claim: dataclasses.replace(result, normaliser=normaliser.name,
                                       same_statement_as="" if owner == normaliser.name else owner)
            for claim, result in _SHARED[key].items()}


def establish_all(normaliser: Normaliser) -> dict[str, ClaimResult]:
    """Every statement that applies to `normaliser`, keyed by claim id (cached on disk)."""
    return cached("claims", normaliser, lambda: _establish_all(normaliser))


def _establish_at_concrete_m(normaliser: Normaliser, reason: str) -> dict[str, ClaimResult]:
    """No symbolic-m closed form: each module that can check its statement at concrete m
    (`establish_concrete(normaliser, reason)`) does; the others have nothing to say (general_m false)."""
    results: dict[str, ClaimResult] = {}
    for module in STATEMENT_MODULES:
        if hasattr(module, "establish_concrete"):
            results.update(module.establish_concrete(normaliser, reason))
    return results


def _establish_piecewise(normaliser: Normaliser, reason: NoClosedForm) -> dict[str, ClaimResult]:
    """No closed form in batch moments: on one smooth piece (`piecewise`), or else at concrete m."""
    try:
        derivation = derive_piecewise(normaliser)
        concrete = agreement(derivation, CONCRETE_SIZES)
        results: dict[str, ClaimResult] = {}
        for module in PIECEWISE_MODULES:
            results.update(module.establish_piecewise(derivation, concrete))
        return results
    except NoClosedForm as piecewise_reason:
        return _establish_at_concrete_m(normaliser, f"{reason}; on a smooth piece: {piecewise_reason}")


def _establish_all(normaliser: Normaliser) -> dict[str, ClaimResult]:
    try:
        derivation = derive(normaliser)
    except NoClosedForm as error:  # l1, l-inf: statistics that are not polynomial batch sums
        return _establish_piecewise(normaliser, error)
    concrete = concrete_evidence(derivation)
    results: dict[str, ClaimResult] = {}
    for module in STATEMENT_MODULES:
        results.update(_module_results(module, derivation, concrete))
    return results


def distinct_statement_counts(theory_json: dict) -> dict:
    """Counts by status over DISTINCT statements of a theory.json ({normaliser: {claim: record}}).

    A record with `same_statement_as` naming a normaliser of the same file that has the same claim is the
    same statement (same formula, shown there) and is not counted again. Returns
    {"total": n, "proved": n, "refuted": n, "conditional": n, "checked": n, "records": all records,
     "shared": records not counted}.
    """
    counts = {"total": 0, **{status.value: 0 for status in Status}, "records": 0, "shared": 0}
    for name, claims in theory_json.items():
        for claim, record in claims.items():
            counts["records"] += 1
            owner = record.get("same_statement_as")
            if owner and owner != name and claim in theory_json.get(owner, {}):
                counts["shared"] += 1
                continue
            counts["total"] += 1
            counts[record["status"]] = counts.get(record["status"], 0) + 1
    return counts
