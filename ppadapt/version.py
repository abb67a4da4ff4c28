"""The package version, in a module of its own so that files ppadapt writes can record it
without importing the package's top level (which imports the tools)."""

__version__ = "0.1.0"
