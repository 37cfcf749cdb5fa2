"""Pictures people look at."""
