"""The meta-learning algorithms, one module each, and the bases of their families."""
