"""Benchmarks: does the synthetic data help a classifier or a detector on real test data?"""
