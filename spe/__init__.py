"""SPE: a secure processing environment for pseudonymised registry data."""

__version__ = "0.1.0"
