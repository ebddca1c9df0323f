"""Tiny, randomly initialised vision-language models of the real transformers classes."""
