"""Structure discovery: which parameters are matrices, and how flat e3nn weights split into blocks."""

from .discover import TP_POLICIES, ParamInfo, classify, describe, discover, param_groups, split_groups

__all__ = ["TP_POLICIES", "ParamInfo", "classify", "describe", "discover", "param_groups", "split_groups"]
