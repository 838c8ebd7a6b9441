"""Progress bars: the search, stability and report stages say how many steps they have, then take them."""

from __future__ import annotations

import io
import time

import pytest
from conftest import planted_blobs

from rca_gpu.engine.device import cpu_device
from rca_gpu.progress import Advance, Reporter, set_total
from rca_gpu.spec import make_cluster, make_reduce
from rca_gpu.tuning import select


class Recorder(Advance):
    """An Advance that remembers the announced totals and the steps taken."""

    def __init__(self) -> None:
        self.totals: list[int] = []
        self.steps = 0
        super().__init__(self._step, self.totals.append)

    def _step(self, n: int = 1) -> None:
        self.steps += n


@pytest.mark.parametrize(("reducer", "clusterer", "sample_size"), [
    ("umap", "dbscan", 5000), ("pca", "kmeans", 5000), ("umap", "dbscan", 120),
])
def test_the_search_announces_its_steps_and_takes_them_all(reducer, clusterer, sample_size):
    x, _ = planted_blobs(n_per=50, centers=4, dim=8, seed=1)
    progress = Recorder()
    select(x, None, make_reduce(reducer), make_cluster(clusterer), cpu_device(), seed=0, progress=progress,
           sample_size=sample_size)
    assert len(progress.totals) == 1 and progress.totals[0] >= 3
    assert progress.steps == progress.totals[0]


def test_the_report_announces_its_steps_and_takes_them_all(catalogue_run):
    from rca_gpu.report.build import REPORT_STEPS, build_report

    progress = Recorder()
    build_report(catalogue_run, progress=progress)
    assert progress.totals == [REPORT_STEPS] and progress.steps == REPORT_STEPS


def test_a_bar_started_without_a_total_shows_an_eta_once_told(monkeypatch):
    import rich.console

    stream, real = io.StringIO(), rich.console.Console
    monkeypatch.setattr(rich.console, "Console", lambda **kw: real(file=stream, width=120, force_terminal=False))
    with Reporter().task("reduce + cluster umap+dbscan", total=None) as advance:
        set_total(advance, 5)
        for _ in range(4):
            time.sleep(0.05)  # rich estimates the remaining time from the speed of the steps taken
            advance(1)
    text = stream.getvalue()
    assert "4/5" in text and "-:--:--" not in text  # steps of a known total, and a remaining time


def test_set_total_ignores_plain_callables():
    calls = []
    set_total(calls.append, 3)  # a plain callable has no .total: nothing is called
    set_total(None, 3)
    assert calls == []
