"""The package's version, in a module of its own: the run directories record it and ``sdo --version``
prints it without importing the package's ``__init__`` from below."""

__version__ = "0.1.0"
