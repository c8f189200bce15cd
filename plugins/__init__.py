"""benchbnn's built-in plugins, registered through the ``benchbnn`` entry-point group.

They use only the public API (``benchbnn.hookimpl``, the spec records, ``benchbnn.core.binary``) and
are meant to be read as examples of how to write a plugin.
"""
