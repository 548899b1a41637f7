"""Evaluation of face swaps: identity similarity and retrieval, pose/expression/shape error,
identity consistency, target leakage and reconstruction quality (`wscswap eval`)."""
