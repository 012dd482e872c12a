"""scaffold: writes PyTorch training projects that train the moment they are generated."""

__version__ = "0.3.0"
