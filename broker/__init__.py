"""The broker: submissions in, episode jobs out, one score back."""
