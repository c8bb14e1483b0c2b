"""WeCompany: enterprise chat and meeting server on Twisted."""

__version__ = "0.1.0"
