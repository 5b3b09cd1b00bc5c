"""flateval's top floor: the command line, and `flateval run`'s local cluster."""

__version__ = "0.1.0"
