"""alarmd: an alarm receiving centre for municipal welfare technology."""

__version__ = "0.1.0"
