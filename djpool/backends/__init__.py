"""Django database engines provided by djpool."""
