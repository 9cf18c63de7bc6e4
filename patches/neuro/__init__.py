"""placeholder: filled by the neuro plugin work."""
