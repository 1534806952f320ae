"""Models for this app arrive with their issue (see ../shared/DESIGN.md)."""
