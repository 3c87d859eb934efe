"""beokit: the classic Beowulf cluster tools, rebuilt."""

__version__ = "0.1.0"
