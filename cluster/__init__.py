"""Ray wiring: connecting, Ray Train, the bounded fan-out pool and atomic store commits. No math here."""
