"""Thin entry points for `ray job submit`: parse and validate config, call cluster/ and robrep/,
exit non-zero on failure."""
