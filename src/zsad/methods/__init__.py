"""Anomaly detection methods and their registry."""

from zsad.methods.base import Method, MethodConfig
from zsad.methods.registry import METHODS, create_method, get_method_class, list_methods

__all__ = ["METHODS", "Method", "MethodConfig", "create_method", "get_method_class", "list_methods"]
