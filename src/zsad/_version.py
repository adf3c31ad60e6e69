"""The version, in a module of its own: bottom-layer modules (``sysinfo``) read it without importing the face."""

__version__ = "0.1.0"
