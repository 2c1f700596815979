"""One module per job kind (invert.py is the model to copy), and `common`, what several share; the registry that
lists them is robrep.fanout.registry."""
