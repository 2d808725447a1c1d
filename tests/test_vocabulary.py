"""UnifiedVocabulary: the id layout shared by text and image codes, its file, its checks."""

import json

import pytest
import torch

from unitok.errors import UserError
from unitok.vocabulary import VOCABULARY_FILE, UnifiedVocabulary


@pytest.fixture
def vocab() -> UnifiedVocabulary:
    return UnifiedVocabulary(text_size=300, codebook_size=64, grid=(4, 4), eos_id=0, pad_id=0, bos_id=1)


def test_layout_is_text_then_specials_then_codes(vocab):
    assert (vocab.boi_id, vocab.eoi_id, vocab.uncond_id, vocab.rewrite_id) == (300, 301, 302, 303)
    assert [vocab.special_id(n) for n in ("unknown", "answer", "verify", "yes", "no", "edit")] == list(range(304, 310))
    assert vocab.image_offset == 310 and vocab.size == 310 + 64
    assert vocab.tokens_per_image == 16
    assert vocab.special_tokens == ["<|boi|>", "<|eoi|>", "<|uncond|>", "<|rewrite|>", "<|unknown|>", "<|answer|>",
                                    "<|verify|>", "<|yes|>", "<|no|>", "<|edit|>"]
    assert vocab.image_tokens[0] == "<|img_0|>" and len(vocab.image_tokens) == 64


def test_codes_round_trip_through_lm_ids(vocab):
    codes = torch.randint(0, 64, (5, 4, 4))
    ids = vocab.to_lm_ids(codes)
    assert ids.shape == (5, 16)
    assert bool(vocab.image_mask()[ids].all()) and not bool(vocab.text_mask()[ids].any())
    assert torch.equal(vocab.from_lm_ids(ids), codes)
    assert ids[0, 0] == vocab.image_offset + codes[0, 0, 0]  # reading order: row by row
    assert ids[0, 4] == vocab.image_offset + codes[0, 1, 0]


def test_masks_partition_text_specials_and_codes(vocab):
    text, image = vocab.text_mask(), vocab.image_mask()
    assert text.shape == image.shape == (vocab.size,)
    assert int(text.sum()) == 300 and int(image.sum()) == 64 and not bool((text & image).any())
    assert not text[vocab.boi_id] and not image[vocab.eoi_id]


def test_conversions_reject_bad_input(vocab):
    with pytest.raises(ValueError, match="grid"):
        vocab.to_lm_ids(torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        vocab.to_lm_ids(torch.full((4, 4), 64))
    with pytest.raises(ValueError, match="image-code range"):
        vocab.from_lm_ids(torch.full((16,), vocab.eoi_id))
    with pytest.raises(ValueError, match="16 image ids"):
        vocab.from_lm_ids(torch.full((15,), vocab.image_offset))


def test_save_and_load_round_trip(vocab, tmp_path):
    path = vocab.save(tmp_path)
    assert path.name == VOCABULARY_FILE
    assert UnifiedVocabulary.load(tmp_path) == vocab
    stored = json.loads(path.read_text())
    assert stored["layout"]["image_offset"] == 310 and stored["bos_id"] == 1


def test_file_saved_before_rewrite_keeps_its_layout(vocab):
    data = vocab.to_dict()
    data["special_names"] = ["boi", "eoi", "uncond"]
    del data["layout"]
    older = UnifiedVocabulary.from_dict(data)
    assert not older.can_rewrite and vocab.can_rewrite
    assert older.image_offset == vocab.image_offset - 7
    with pytest.raises(KeyError, match="rewrite"):
        older.special_id("rewrite")


def test_file_without_bos_means_no_bos(vocab, tmp_path):
    data = vocab.to_dict()
    del data["bos_id"]
    assert UnifiedVocabulary.from_dict(data).bos_id is None


def test_loading_rejects_missing_or_inconsistent_files(vocab, tmp_path):
    with pytest.raises(UserError, match="unitok lm export"):
        UnifiedVocabulary.load(tmp_path)
    data = vocab.to_dict()
    data["layout"]["image_offset"] = 999
    with pytest.raises(UserError, match="inconsistent"):
        UnifiedVocabulary.from_dict(data)
    with pytest.raises(UserError, match="not a UniTok vocabulary"):
        UnifiedVocabulary.from_dict({"text_size": 3})


@pytest.mark.parametrize(
    ("mismatch", "message"),
    [
        ({"codebook_size": 128}, "128 codes, vocabulary expects 64"),
        ({"grid": (8, 8)}, r"\(8, 8\) code grid"),
        ({"lm_vocab_size": 300}, "300 embedding rows, vocabulary needs 374"),
        ({"text_size": 301}, "301 ids, vocabulary expects 300"),
    ],
)
def test_check_compatible_names_each_mismatch(vocab, mismatch, message):
    with pytest.raises(UserError, match=message):
        vocab.check_compatible(**mismatch)


def test_check_compatible_accepts_matching_parts(vocab):
    vocab.check_compatible(codebook_size=64, grid=(4, 4), lm_vocab_size=374, text_size=300)


def test_invalid_layouts_are_refused():
    with pytest.raises(ValueError, match="eos_id"):
        UnifiedVocabulary(text_size=10, codebook_size=4, grid=(2, 2), eos_id=10, pad_id=0)
    with pytest.raises(ValueError, match="bos_id"):
        UnifiedVocabulary(text_size=10, codebook_size=4, grid=(2, 2), eos_id=0, pad_id=0, bos_id=12)
    with pytest.raises(ValueError, match="invalid"):
        UnifiedVocabulary(text_size=10, codebook_size=0, grid=(2, 2), eos_id=0, pad_id=0)
