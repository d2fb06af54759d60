"""Guests that vnet builds itself (source in this package, built reproducibly with gcc)."""
