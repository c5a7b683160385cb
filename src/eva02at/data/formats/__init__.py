"""Annotation formats, one module each, registered where it is defined.

This package imports none of its modules: a module that needs one format imports that format's module
alone, and ``registered`` imports them all for whoever reads any format (the frames stage).
"""
