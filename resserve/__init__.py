"""resserve: a fast, observable HTTP server for ResNet-family image classifiers."""

__version__ = "0.1.0"
