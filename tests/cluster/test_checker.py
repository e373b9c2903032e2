"""The cluster tests' checker judges what it is given: each kind of broken promise is found, and a clean
run passes (these run in the ordinary suite: no cluster needed)."""

from __future__ import annotations

from keyvault.cli.cluster_load import ACCEPTED, REFUSED, UNKNOWN, Answer, check, judge, longest_gap


def a(serial: str, order: str, outcome: str, holder: str | None = None, at: float = 0.0) -> Answer:
    return Answer(serial, order, outcome, holder if holder is not None or outcome != ACCEPTED else order, at, 0, at)


def test_a_clean_run_passes() -> None:
    answers = [a("S1", "o1", ACCEPTED), a("S1", "o1", ACCEPTED), a("S1", "o2", REFUSED, "o1"),
               a("S2", "o3", UNKNOWN), a("S2", "o3", ACCEPTED)]
    verdict = check(answers, {"S1": "o1", "S2": "o3"})
    assert verdict.ok and verdict.acknowledged == 2 and verdict.unknown == 1 and verdict.stored == 2


def test_an_acknowledged_redeem_missing_from_postgresql_is_lost() -> None:
    verdict = check([a("S1", "o1", ACCEPTED)], {})
    assert not verdict.ok and len(verdict.lost) == 1


def test_an_acknowledged_redeem_held_for_another_order_is_lost() -> None:
    verdict = check([a("S1", "o1", ACCEPTED)], {"S1": "o2"})
    assert not verdict.ok and verdict.lost


def test_a_key_accepted_for_two_orders_is_a_double() -> None:
    verdict = check([a("S1", "o1", ACCEPTED), a("S1", "o2", ACCEPTED)], {"S1": "o1"})
    assert not verdict.ok and len(verdict.doubles) == 1


def test_a_refusal_naming_the_wrong_holder_is_caught() -> None:
    assert not check([a("S1", "o2", REFUSED, "o3")], {"S1": "o1"}).ok
    assert not check([a("S1", "o2", REFUSED, None)], {"S1": "o1"}).ok
    assert not check([a("S1", "o1", REFUSED, "o1")], {"S1": "o1"}).ok


def test_an_answer_that_is_neither_definite_nor_unknown_is_indefinite() -> None:
    verdict = check([a("S1", "o1", "status damaged"), a("S2", "o1", "HTTP 500")], {})
    assert not verdict.ok and len(verdict.indefinite) == 2


def test_keyvault_answers_map_to_outcomes() -> None:
    assert judge("accepted", "o1", "o1") == ACCEPTED and judge("accepted", None, "o1") == ACCEPTED
    assert judge("redeemed", "o1", "o2") == REFUSED
    assert judge("accepted", "o1", "o2") != ACCEPTED  # accepted naming another order is no acknowledgement
    assert judge("void", None, "o1") not in (ACCEPTED, REFUSED, UNKNOWN)


def test_the_longest_gap_counts_from_the_fault() -> None:
    answers = [a("S1", "o1", ACCEPTED, at=1.0), a("S2", "o1", ACCEPTED, at=4.0), a("S3", "o1", ACCEPTED, at=4.5)]
    assert longest_gap(answers, 0.5, 5.0) == 3.0
    assert longest_gap([], 0.0, 2.0) == 2.0
