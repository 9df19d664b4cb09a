"""The routing benchmark's histogram median from a Prometheus page ("pred err p50")."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "routing"))

from promtext import bucket_quantile, family_median, histogram_buckets

PAGE = """# HELP inference_extension_ttft_prediction_error_ratio |predicted - observed| / observed TTFT
# TYPE inference_extension_ttft_prediction_error_ratio histogram
inference_extension_ttft_prediction_error_ratio_bucket{model_name="m",le="0.1"} 2
inference_extension_ttft_prediction_error_ratio_bucket{model_name="m",le="0.5"} 6
inference_extension_ttft_prediction_error_ratio_bucket{model_name="m",le="1"} 8
inference_extension_ttft_prediction_error_ratio_bucket{model_name="m",le="+Inf"} 8
inference_extension_ttft_prediction_error_ratio_bucket{model_name="n",le="0.1"} 0
inference_extension_ttft_prediction_error_ratio_bucket{model_name="n",le="0.5"} 0
inference_extension_ttft_prediction_error_ratio_bucket{model_name="n",le="1"} 2
inference_extension_ttft_prediction_error_ratio_bucket{model_name="n",le="+Inf"} 2
inference_extension_ttft_prediction_error_ratio_sum 3.1
inference_extension_ttft_prediction_error_ratio_count 10
inference_extension_request_total{model_name="m"} 10
"""


def test_buckets_are_summed_over_labels_and_the_median_interpolated() -> None:
    families = histogram_buckets(PAGE, "inference_extension_ttft_prediction_error")
    assert families == {
        "inference_extension_ttft_prediction_error_ratio": [(0.1, 2.0), (0.5, 6.0), (1.0, 10.0), (math.inf, 10.0)]
    }
    # rank 5 of 10 lies in (0.1, 0.5], which holds ranks 3..6: 0.1 + 0.4 x (5 - 2) / (6 - 2)
    assert family_median(PAGE, "inference_extension_ttft_prediction_error") == pytest.approx(0.4)


def test_no_family_no_observations_and_the_inf_bucket() -> None:
    assert family_median(PAGE, "inference_extension_missing") is None
    assert math.isnan(bucket_quantile([(0.1, 0.0), (math.inf, 0.0)], 0.5))
    assert bucket_quantile([(0.1, 1.0), (math.inf, 4.0)], 0.5) == 0.1  # beyond the last finite bound
    assert bucket_quantile([(0.2, 4.0), (math.inf, 4.0)], 0.5) == pytest.approx(0.1)  # from 0 in the first bucket
