"""The image tokenizer: images <-> grids of discrete codes (``VQTokenizer``).

``tokenizer.images`` holds the PIL conventions, ``tokenizer.training`` / ``tokenizer.data`` the
Lightning training, ``tokenizer.export`` and ``tokenizer.code_shards`` what ``unitok tokenizer
export`` and ``unitok tokenize`` run.
"""

from tokenizer.model import VQTokenizer

__all__ = ["VQTokenizer"]
