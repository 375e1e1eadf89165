"""Bridges to training frameworks (nequip); each needs its extra installed."""
