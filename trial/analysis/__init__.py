"""The protocol's statistical analysis of a locked dataset."""
