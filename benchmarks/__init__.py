"""Benchmarks of tb_gradstats: callback overhead, dashboard scale, event size."""
