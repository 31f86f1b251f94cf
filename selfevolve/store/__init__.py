"""What goes to the history store and what user SQL may read there (no store client here)."""
