"""Commands added by this module."""
