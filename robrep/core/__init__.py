"""The plumbing every part of robrep stands on: errors, names that become paths, locations (local, NFS or object
store) with the one atomic write, the strict config loader, and fault points. Imports nothing else of robrep."""
