"""Conformance of every registered algorithm card (rca_gpu.engine.conformance), as scikit-learn's
check_estimator is for estimators: the built-in cards, and the toy plug-in card of tests/toy_cards.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
import toy_cards

from rca_gpu.engine import registry
from rca_gpu.engine.conformance import checks_for

CARDS = [*registry.reducers().values(), *registry.clusterers().values(), toy_cards.CARD]
CASES = [(card, check) for card in CARDS for check in checks_for(card)]


@pytest.mark.parametrize("card, check", CASES, ids=[f"{c.stage}-{c.name}-{f.__name__}" for c, f in CASES])
def test_card_follows_the_rules(card, check):
    check(card)


def test_a_broken_card_is_named_by_the_rule_it_breaks():
    from rca_gpu.engine.conformance import check_clusterer_candidates, check_params

    class Broken(toy_cards.KCentersCard):
        limits = {"eps": lambda n: n}

        def candidates(self, fixed, embedding_graph, n, *, distinct=None):
            return [{"k": 5}]

    with pytest.raises(AssertionError, match="a data limit bounds a parameter the card does not have"):
        check_params(Broken())
    with pytest.raises(AssertionError, match="replaces fixed"):
        check_clusterer_candidates(Broken())


def test_cards_and_their_gpu_twins_load_no_heavy_library():
    code = ("import sys, rca_gpu; from rca_gpu.engine import registry; registry.implementations(); "
            "print(sorted(m for m in ('torch', 'cupy', 'cuml', 'cuvs', 'umap', 'sklearn', 'faiss', "
            "'fast_hdbscan', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
