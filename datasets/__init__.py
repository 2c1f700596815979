"""Dataset sources, `.beton` writing and FFCV loaders. Loaders return [0,1] floats; models normalize.

This folder is imported from the checkout (never installed as `datasets`, which would shadow Hugging Face's).
"""
