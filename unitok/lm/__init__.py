"""The unified LM: one causal LM over text ids and image codes (docs/training.md).

Public names are imported lazily so ``unitok lm --help`` does not import torch/transformers.
"""

from __future__ import annotations

from unitok.lazy_exports import lazy_getattr

_PUBLIC = {
    "load_unified_lm": "unitok.lm.model",
    "save_unified_lm": "unitok.lm.model",
    "build_pretrained_lm": "unitok.lm.model",
    "build_scratch_lm": "unitok.lm.model",
    "ScratchConfig": "unitok.lm.model",
    "text_to_image_prompt": "unitok.lm.sequences",
    "captioning_prompt": "unitok.lm.sequences",
    "unconditional_prompt": "unitok.lm.sequences",
    "Prompt": "unitok.lm.sequences",
    "encode_text": "unitok.lm.text_tokenizer",
    "decode_text": "unitok.lm.text_tokenizer",
}

__all__ = sorted(_PUBLIC)

__getattr__ = lazy_getattr("unitok.lm", _PUBLIC)
