"""The figures `unitok eval tokenizer` and `unitok eval captions` report, on cases worked out by hand.

CIDEr-D below: every image has reference n-grams no other image shares, so with N = 2 images each
n-gram's idf is log 2 (an n-gram no reference has gets the same), every weight is tf · log 2 and
the cosines are those of plain counts.
"""

import math

import pytest
import torch

from unitok.evaluation.caption_scores import score_captions
from unitok.evaluation.cider import caption_words, cider_d
from unitok.evaluation.tokenizer_eval import PSNR_CAP, codebook_statistics, psnr, ssim

OTHER = "w x y z"  # a second image, captioned perfectly, so that the corpus has N = 2 images


def cider_of_first(candidate: str, references: list[str]) -> float:
    return cider_d([candidate, OTHER], [references, [OTHER]])[1][0]


def test_a_caption_equal_to_its_reference_scores_10():
    corpus, scores = cider_d(["a b c d", OTHER], [["a b c d"], [OTHER]])
    assert scores == pytest.approx([10.0, 10.0]) and corpus == pytest.approx(10.0)


def test_a_caption_sharing_no_ngram_scores_0():
    assert cider_of_first("e f g h", ["a b c d"]) == 0.0


def test_a_three_word_caption_has_no_4grams_so_it_scores_three_quarters():
    assert cider_of_first("a b c", ["a b c"]) == pytest.approx(7.5)


def test_scores_are_averaged_over_the_references():
    assert cider_of_first("a b c d", ["a b c d", "e f g h"]) == pytest.approx(5.0)


def test_cosines_per_ngram_length_and_the_gaussian_length_penalty():
    # candidate a b c d q (4 bigrams) vs reference a b c d (3 bigrams): delta 1, sigma 6
    cosines = [4 / (math.sqrt(5) * 2), 3 / (2 * math.sqrt(3)), 2 / (math.sqrt(3) * math.sqrt(2)), 1 / math.sqrt(2)]
    expected = 10 * math.exp(-1 / 72) * sum(cosines) / 4
    assert cider_of_first("a b c d q", ["a b c d"]) == pytest.approx(expected)


def test_repeated_words_are_clipped_to_the_reference_count():
    # unigram a: min(4, 1) · 1 over norms 4 and 2 = 1/8 (1/2 without clipping); no shared longer n-gram
    assert cider_of_first("a a a a", ["a b c d"]) == pytest.approx(10 * (1 / 8) / 4)


def test_one_image_alone_scores_0_as_in_the_reference_code():
    assert cider_d(["a b c d"], [["a b c d"]]) == (0.0, [0.0])


def test_captions_are_compared_as_lower_cased_words():
    assert caption_words("A cat, sitting on the MAT.") == ["a", "cat", "sitting", "on", "the", "mat"]
    assert cider_of_first("A B, c d!", ["a b c d"]) == pytest.approx(10.0)


def test_perfect_captions_score_the_maximum_and_unrelated_ones_nothing():
    references = [["a large red circle on white"], ["two blue squares on black"]]
    perfect = score_captions(["A large red circle on white.", "two blue squares on black"], references)
    assert (perfect.bleu4, perfect.rouge_l, perfect.cider_d, perfect.exact) == pytest.approx((1.0, 1.0, 10.0, 1.0))
    # BLEU and ROUGE-L take the best reference; CIDEr-D averages over all of them
    second = score_captions(["a large red circle on white", "two blue squares on black"],
                            [["a large red circle on white", "a big red disc"], ["two blue squares on black"]])
    assert (second.bleu4, second.rouge_l, second.exact) == pytest.approx((1.0, 1.0, 1.0))
    assert 5.0 < second.cider_d < 10.0
    unrelated = score_captions(["zebra", "mountain lake"], references)
    assert (unrelated.bleu4, unrelated.rouge_l, unrelated.cider_d, unrelated.exact) == (0.0, 0.0, 0.0, 0.0)


def test_psnr_of_identical_images_is_capped_and_a_known_error_gives_its_value():
    images = torch.rand(2, 3, 16, 16) * 0.8
    assert psnr(images, images).tolist() == [PSNR_CAP, PSNR_CAP]  # infinite without the cap
    assert psnr(images + 0.1, images) == pytest.approx(torch.tensor([20.0, 20.0]), abs=1e-3)  # MSE 0.01, range 1


def test_ssim_of_identical_images_is_1_and_lower_for_noise():
    images = torch.rand(2, 3, 32, 32)
    assert ssim(images, images) == pytest.approx(torch.ones(2))
    assert (ssim((images + 0.3 * torch.randn_like(images)).clamp(0, 1), images) < 0.9).all()


def test_codebook_usage_and_perplexity():
    assert codebook_statistics(torch.tensor([5, 5, 0, 0])) == (2, pytest.approx(2.0))
    assert codebook_statistics(torch.tensor([7, 0, 0, 0])) == (1, pytest.approx(1.0))
    assert codebook_statistics(torch.tensor([1, 1, 1, 1])) == (4, pytest.approx(4.0))
