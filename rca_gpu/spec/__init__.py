"""Pipeline specifications: plain data, parsed, checked and serialised; no torch, no array library.

- :mod:`rca_gpu.spec.params`: the extractors and their parameters (the reducers' and clusterers' live on
  their cards, rca_gpu.engine);
- :mod:`rca_gpu.spec.grammar`: pipeline strings and the stage specs they parse into;
- :mod:`rca_gpu.spec.config`: RunSpec, the run options and their TOML form;
- :mod:`rca_gpu.spec.checks`: what a run checks before any work.
"""

from rca_gpu.engine.knn import GPU_ONLY_KNN_BACKENDS, KNN_BACKENDS
from rca_gpu.engine.params import Param
from rca_gpu.spec.checks import (
                                 check_backends,
                                 check_data_limits,
                                 check_dut_known,
                                 check_enough_images,
                                 check_memory,
                                 check_paths,
                                 physical_memory,
)
from rca_gpu.spec.config import (
                                 DEFAULT_PIPELINE,
                                 DEVICES,
                                 PRECISIONS,
                                 RUN_OPTIONS,
                                 RUN_PARAMS,
                                 STUDY_DUT_FEATURES,
                                 STUDY_FEATURES,
                                 RunSpec,
                                 build_run_spec,
                                 dump_toml,
                                 load_config,
)
from rca_gpu.spec.grammar import (
                                 SELECT_FIX,
                                 ClusterSpec,
                                 FeatureSpec,
                                 PipelineSpec,
                                 ReduceSpec,
                                 make_cluster,
                                 make_features,
                                 make_reduce,
                                 parse_pipeline,
                                 split_outside_parens,
)
from rca_gpu.spec.params import (
                                 AE_IMAGE_SIZES,
                                 EXTRACTORS,
                                 MAX_IMAGE_SIZE,
                                 MAX_PIXEL_SIZE,
                                 PRECOMPUTED,
                                 ExtractorInfo,
                                 extractors,
                                 register_extractor,
)

__all__ = [
    "AE_IMAGE_SIZES", "DEFAULT_PIPELINE", "DEVICES", "EXTRACTORS", "GPU_ONLY_KNN_BACKENDS", "KNN_BACKENDS",
    "MAX_IMAGE_SIZE", "MAX_PIXEL_SIZE", "PRECISIONS",
    "PRECOMPUTED", "RUN_OPTIONS", "RUN_PARAMS", "SELECT_FIX", "STUDY_DUT_FEATURES", "STUDY_FEATURES", "ClusterSpec",
    "ExtractorInfo", "FeatureSpec", "Param", "PipelineSpec", "ReduceSpec", "RunSpec", "build_run_spec",
    "check_backends", "check_data_limits", "check_dut_known", "check_enough_images", "check_memory", "check_paths",
    "dump_toml", "extractors", "load_config", "make_cluster", "make_features", "make_reduce", "parse_pipeline",
    "physical_memory", "register_extractor", "split_outside_parens",
]
