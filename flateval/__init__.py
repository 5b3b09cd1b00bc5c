"""flateval: the command line and the typed settings shared by broker and env workers."""

__version__ = "0.1.0"
