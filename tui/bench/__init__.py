"""Benchmarks with peers side by side: speed (vs transformers), placement shapes, conversations."""
