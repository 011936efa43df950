"""airo's version (``airo.core.__version__``), in a module of its own so that the modules
recording it (stamps, the training record, the cache key) need not import the package."""

__version__ = "0.1.0"
