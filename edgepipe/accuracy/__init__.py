"""Accuracy recovery tools: per-layer sensitivity, mixed precision to a budget, QAT, and comparing a
bundle with its float model. They quantize through the target (`Target.qdq_model`), never a backend."""
