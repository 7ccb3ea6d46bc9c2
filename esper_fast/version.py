"""The package version (floor 1: imports nothing), so that modules below the package face can name it."""

__version__ = "0.1.0"
