"""Boot paths: the tiny guest's flat image, and Linux's 64-bit boot protocol."""
