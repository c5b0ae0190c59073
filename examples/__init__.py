"""Sample user apps and launchers."""
