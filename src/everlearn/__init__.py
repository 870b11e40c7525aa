"""everlearn: continual learning of large language models, from a YAML stream to a report."""

__version__ = "0.1.0"
