"""``ENGINE: "djpool.backends.mysql"``: Django's MySQL backend with a pool (see base.py)."""
