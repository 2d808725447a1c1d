"""The image tokenizer: images <-> grids of discrete codes (``VQTokenizer``).

``tokenizer.images`` holds the PIL conventions, ``tokenizer.training`` / ``tokenizer.data`` the
Lightning training, ``tokenizer.cli`` and ``tokenizer.extract`` the ``unitok tokenizer`` and
``unitok tokenize`` commands.
"""

from tokenizer.model import VQTokenizer

__all__ = ["VQTokenizer"]
