"""Private implementation of jaxgmm; the public face is ``jaxgmm/__init__.py``."""
