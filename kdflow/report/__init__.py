"""The run's pictures and its HTML and Markdown pages."""
