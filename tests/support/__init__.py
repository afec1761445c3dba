"""What tests and benchmarks share: server harnesses, documents, the corpus, fault helpers.

Test modules and ``bench/`` import from here; they never import each other.
"""
