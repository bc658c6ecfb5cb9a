"""Mini EC benchmarks (not tests): the raw broker ceiling and, later, the pipeline scenarios."""
