"""The stability step of a run: its library warnings go to the log, and too few images are not scored."""

from __future__ import annotations

import json
import logging
import warnings

from helpers import pattern_images

from rca_gpu.catalogue.run_hook import STABILITY_MIN_IMAGES
from rca_gpu.data.sources import from_arrays
from rca_gpu.spec import build_run_spec

PIPELINE = "pixels(image_size=16)+pca+kmeans"


def _failures(n_per: int):
    images, labels = pattern_images(n_per=n_per, groups=3, size=16)
    return from_arrays(images, {"root_cause": [f"cause_{g}" for g in labels]})


def test_warnings_of_the_stability_step_go_to_the_log_not_the_terminal(tmp_path, monkeypatch, caplog):
    """Like the search's: e.g. umap's 'n_neighbors is larger than the dataset size' on small resamples."""
    from rca_gpu.catalogue import stability
    from rca_gpu.pipeline import run

    original = stability.run_stability

    def warning_run_stability(*args, **kwargs):
        warnings.warn("n_neighbors is larger than the dataset size; truncating", UserWarning, stacklevel=1)
        return original(*args, **kwargs)

    monkeypatch.setattr(stability, "run_stability", warning_run_stability)
    spec = build_run_spec(pipeline=PIPELINE, device="cpu", workers=0, stability=2, cache_features=False,
                          plot_embedding=False)
    with warnings.catch_warnings(record=True) as shown, caplog.at_level(logging.DEBUG, logger="rca_gpu"):
        warnings.simplefilter("always")
        result = run(spec, _failures(5), tmp_path / "run")
    assert result.run_info["catalogue"]["stability"]["resamples"] == 2  # the step ran
    assert not [w for w in shown if "n_neighbors is larger" in str(w.message)]
    assert any("library warning" in r.getMessage() and "n_neighbors is larger" in r.getMessage()
               for r in caplog.records)


def test_stability_is_not_scored_below_the_minimum_of_images_and_run_json_says_why(tmp_path):
    from rca_gpu.pipeline import run

    assert STABILITY_MIN_IMAGES == 10
    spec = build_run_spec(pipeline=PIPELINE, device="cpu", workers=0, stability=4, cache_features=False,
                          plot_embedding=False)
    result = run(spec, _failures(3), tmp_path / "few")  # 9 images
    catalogue = json.loads((tmp_path / "few" / "run.json").read_text())["catalogue"]
    assert result.stability is None and catalogue["stability"] is None
    assert "9 usable images, fewer than 10" in catalogue["stability_not_scored"]
    off = build_run_spec(pipeline=PIPELINE, device="cpu", workers=0, stability=0, cache_features=False,
                         plot_embedding=False)
    catalogue = run(off, _failures(4), tmp_path / "off").run_info["catalogue"]
    assert catalogue["stability"] is None and "--stability 0" in catalogue["stability_not_scored"]
