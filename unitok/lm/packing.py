"""Whether an LM keeps the sequences of a packed row apart (``collate(pack_length=...)``).

transformers builds the block-diagonal mask of a packed row from ``position_ids`` that restart at 0
(``masking_utils.find_packed_sequence_indices``) in the models that create their mask with
``create_causal_mask`` (Llama, Qwen2, GPT-2 in transformers 5); a model whose mask ignores
``position_ids`` (remote code, an older port) would let a row's later sequences attend to its
earlier ones. Rather than keep a list of families, the model is asked: a sequence packed after
another must come out the same whatever that other sequence holds.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from unitok.lm.image_positions import lm_forward
from unitok.lm.sequences import captioning_example, collate, editing_example, rewriting_example
from unitok.vocabulary import UnifiedVocabulary


@torch.no_grad()
def packing_is_exact(model: PreTrainedModel, vocab: UnifiedVocabulary) -> bool:
    """True when the logits of a packed row's second sequence do not depend on its first one."""
    codes = torch.zeros(vocab.grid, dtype=torch.long)
    longest = editing_example(codes, [1], codes, vocab)  # a row of its own, as long as the two below
    second = rewriting_example([4], [5], vocab)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout: the two passes must differ only in the first sequence
    try:
        logits = []
        for code, text in ((0, [1, 2]), (1, [3, 1])):
            first = captioning_example(torch.full(vocab.grid, code, dtype=torch.long), text, vocab)
            batch = collate([longest, first, second], vocab, pack_length=1)
            row = int((batch["sequence"] == 2).any(1).nonzero()[0])
            if not bool((batch["sequence"][row] == 1).any()):
                raise AssertionError("the probe's two sequences must share a row")
            output = lm_forward(model, vocab, batch["input_ids"].to(device),
                                position_ids=batch["position_ids"].to(device), use_cache=False)
            logits.append(output.logits[row][batch["sequence"][row] == 2].float())
    finally:
        model.train(was_training)
    return bool(torch.allclose(logits[0], logits[1], rtol=0.0, atol=1e-5))
