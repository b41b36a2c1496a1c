"""Code that runs *inside* the sandbox, and the only place TensorFlow is imported.

Never import this package from the host side: the parent talks to it only through
:mod:`modelwarden.sandbox.protocol` frames.
"""
