"""Visual-token statistics (``tokenizer.stats``, ``unitok tokenizer stats``): the figures on code
grids whose answers are known, then the command on tiny image shards and code shards."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import TINY_IMAGE_TOKENIZER

from tokenizer import VQTokenizer
from tokenizer.stats import CodeStatistics, SparseCounts, entropy_bits, zipf_fit
from unitok.cli import main
from unitok.data.shapes_shards import write_shapes_shards
from unitok.data.shards import ShardWriter

K = 16


def statistics_of(grids: np.ndarray, codebook_size: int = K) -> dict:
    statistics = CodeStatistics(codebook_size, grids.shape[1:])
    statistics.add(grids)
    return statistics.summary()


# ----------------------------------------------------------------------------------------------
# Known answers


def test_codes_used_equally_often_have_entropy_log2_k():
    rng = np.random.default_rng(0)
    grids = np.stack([rng.permutation(K).reshape(4, 4) for _ in range(50)])  # every code 50 times
    unigram = statistics_of(grids)["unigram"]
    assert unigram["entropy_bits"] == pytest.approx(math.log2(K))
    assert unigram["perplexity"] == pytest.approx(K)
    assert unigram["codes_used"] == K and unigram["usage"] == 1.0


def test_a_code_that_repeats_its_left_neighbour_is_fully_predicted_by_it():
    rng = np.random.default_rng(0)
    grids = np.repeat(rng.integers(0, K, size=(200, 4, 1)), 4, axis=2)  # each row one code
    summary = statistics_of(grids)
    left = summary["neighbours"]["left"]
    assert left["conditional_entropy_bits"] == pytest.approx(0.0, abs=1e-12)
    assert left["mutual_information_bits"] == pytest.approx(left["code_entropy_bits"])
    assert left["code_entropy_bits"] == pytest.approx(summary["unigram"]["entropy_bits"])
    assert left["samples"] == 200 * 4 * 3
    assert left["conditional_entropy_bias_bits"] == 0.0  # one code per context: nothing left to miss
    # Rows are drawn independently, so the upper neighbour says nothing; but the plug-in estimate
    # is biased up, by about (K - 1)^2 / (2 N ln 2) bits for N independent pairs (here 200 x 3
    # pairs of rows, each counted once per column), so it is not 0.
    up = summary["neighbours"]["up"]
    assert 0 < up["mutual_information_bits"] < 2 * (K - 1) ** 2 / (2 * 200 * 3 * math.log(2))


def test_both_neighbours_together_predict_a_code_that_is_their_sum():
    rng = np.random.default_rng(1)
    grids = np.zeros((300, 5, 5), dtype=np.int64)
    grids[:, 0, :] = rng.integers(0, K, size=(300, 5))
    grids[:, :, 0] = rng.integers(0, K, size=(300, 5))
    for row in range(1, 5):
        for column in range(1, 5):
            grids[:, row, column] = (grids[:, row - 1, column] + grids[:, row, column - 1]) % K
    neighbours = statistics_of(grids)["neighbours"]
    assert neighbours["left_and_up"]["conditional_entropy_bits"] == pytest.approx(0.0, abs=1e-12)
    assert neighbours["left"]["conditional_entropy_bits"] > 3.5  # one neighbour alone: close to log2 16


def test_a_zipf_distributed_sample_recovers_its_exponent():
    rng = np.random.default_rng(0)
    ranks = np.arange(1, 501)
    p = ranks ** -1.1 / (ranks ** -1.1).sum()
    codes = rng.permutation(500)[rng.choice(500, size=(4000, 8, 8), p=p)]  # rank r -> some code
    zipf = statistics_of(codes, codebook_size=512)["zipf"]
    assert zipf["exponent"] == pytest.approx(1.1, abs=0.05)
    assert zipf["ranks"] == [1, 500] and zipf["r_squared"] > 0.99


def test_zipf_fit_of_counts_exactly_on_a_power_law():
    counts = np.round(1e6 * np.arange(1, 101, dtype=float) ** -2.0)
    assert zipf_fit(counts)["exponent"] == pytest.approx(2.0, abs=0.01)
    assert zipf_fit(np.array([5, 0, 0]))["exponent"] is None  # one code used: nothing to fit


def test_per_position_usage():
    grids = np.zeros((8, 2, 2), dtype=np.int64)
    grids[:, 0, 1] = np.arange(8)  # the top right cell takes 8 codes equally often, the rest one
    statistics = CodeStatistics(K, (2, 2))
    statistics.add(grids)
    entropy, distinct = statistics.position_maps()
    np.testing.assert_allclose(entropy, [[0.0, 3.0], [0.0, 0.0]], atol=1e-12)
    np.testing.assert_array_equal(distinct, [[1, 8], [1, 1]])


def test_sparse_counts_match_dense_counts_across_merges():
    rng = np.random.default_rng(0)
    counts = SparseCounts(merge_every=100)  # merges many times
    batches = [rng.integers(0, 50, size=rng.integers(1, 80)) for _ in range(30)]
    for batch in batches:
        counts.add(batch)
    ids, values = counts.items()
    dense = np.bincount(np.concatenate(batches), minlength=50)
    np.testing.assert_array_equal(ids, np.flatnonzero(dense))
    np.testing.assert_array_equal(values, dense[dense > 0])


def test_pair_counts_of_a_large_codebook_stay_sparse():
    """2^20 codes: a dense K x K count array would be 8 TB; the counts hold one entry per pair seen."""
    big = 1 << 20
    rng = np.random.default_rng(0)
    summary = statistics_of(rng.integers(0, big, size=(20, 4, 4)), codebook_size=big)
    assert summary["neighbours"]["left"]["distinct_pairs"] <= 20 * 4 * 3
    assert summary["unigram"]["log2_codebook_size"] == 20


def test_entropy_of_counts():
    assert entropy_bits(np.array([1, 1, 0, 2])) == pytest.approx(1.5)
    assert entropy_bits(np.zeros(3)) == 0.0


# ----------------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny FSQ tokenizer (48 codes, 4x4 grids), Shapes image shards and their code shards."""
    root = tmp_path_factory.mktemp("stats")
    VQTokenizer(**TINY_IMAGE_TOKENIZER).save_pretrained(root / "tokenizer")
    write_shapes_shards(root / "images", num=10, size=32, seed=0, split="val", shard_size=6, progress=False)
    assert main(["tokenize", "--tokenizer", str(root / "tokenizer"), "--shards", str(root / "images"),
                 "--out", str(root / "codes"), "--batch-size", "4"]) == 0
    return root


def stats(tiny: Path, shards: str | Path, out: Path, *extra: str, tokenizer: Path | None = None) -> int:
    return main(["tokenizer", "stats", "--tokenizer", str(tokenizer or tiny / "tokenizer"), "--shards", str(shards),
                 "--out", str(out), "--batch-size", "4", *extra])


def test_image_shards_and_their_code_shards_give_the_same_statistics(tiny, tmp_path, capsys):
    assert stats(tiny, tiny / "images", tmp_path / "from-images") == 0
    assert stats(tiny, tiny / "codes", tmp_path / "from-codes") == 0
    printed = capsys.readouterr()
    assert "10 images from image shards" in printed.out and "10 images from code shards" in printed.out
    assert "stats" in printed.err  # progress goes to stderr
    from_images = json.loads((tmp_path / "from-images" / "stats.json").read_text())
    from_codes = json.loads((tmp_path / "from-codes" / "stats.json").read_text())
    assert from_images["source"] == "image shards" and from_codes["source"] == "code shards"
    for figure in ("unigram", "zipf", "neighbours", "positions", "top_codes"):
        assert from_images[figure] == from_codes[figure]
    assert from_codes["codebook_size"] == 48 and from_codes["grid_size"] == [4, 4] and from_codes["codes"] == 160
    for name in ("rank_frequency", "entropy", "positions", "atlas"):
        with Image.open(tmp_path / "from-codes" / f"{name}.png") as plot:
            assert plot.format == "PNG" and plot.width > 100
    assert not list((tmp_path / "from-codes").glob(".*")), "a temporary file was left behind"


def test_max_images_and_another_view(tiny, tmp_path):
    assert stats(tiny, tiny / "codes", tmp_path / "out", "--max-images", "3", "--view", "clean") == 0
    summary = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert summary["images"] == 3 and summary["view"] == "clean"


def write_code_shards(out: Path, grids: np.ndarray, codebook_size: int) -> None:
    with ShardWriter(out, prefix="codes") as writer:
        for index, grid in enumerate(grids):
            writer.write({"__key__": f"{index:04d}", "codes.npy": grid.astype(np.int16),
                          "json": {"codebook_size": codebook_size, "grid_size": list(grid.shape)}})


@pytest.mark.parametrize("case, message", [
    ("no tokenizer", "does not exist (pass a folder from `unitok tokenizer export`, or a shipped tokenizer: photo128)"),
    ("no shards", "no shards found at"),
    ("max images", "--max-images must be >= 1, got 0"),
    ("codebook", "the code shards were made by a tokenizer with 1000 codes (sample '0000'), but --tokenizer has 48"),
    ("grid", "the code shards hold grids of shape (8, 8) (sample '0000'), but --tokenizer makes 4x4 grids"),
    ("view", "sample '0000' has no 'clean' view (it has: none)"),
])
def test_bad_input_is_a_one_line_error(tiny, tmp_path, capsys, case, message):
    grids = np.zeros((2, 8, 8) if case == "grid" else (2, 4, 4), dtype=np.int64)
    write_code_shards(tmp_path / "codes", grids, codebook_size=1000 if case == "codebook" else 48)
    shards, extra, tokenizer = tmp_path / "codes", [], None
    if case == "no tokenizer":
        tokenizer = tmp_path / "nowhere"
    elif case == "no shards":
        shards = tmp_path / "empty"
    elif case == "max images":
        extra = ["--max-images", "0"]
    elif case == "view":
        extra = ["--view", "clean"]
    assert stats(tiny, shards, tmp_path / "out", *extra, tokenizer=tokenizer) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("unitok tokenizer: error: ") and message in error
    assert not (tmp_path / "out").exists()


def test_help_imports_nothing_heavy():
    code = (
        "import sys, contextlib, io\n"
        "from unitok.cli import main\n"
        "for argv in (['tokenizer', '--help'], ['tokenizer', 'stats', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        try: main(argv)\n"
        "        except SystemExit: pass\n"
        "    print(out.getvalue())\n"
        "print('HEAVY', [m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in result.stdout and "--max-images N" in result.stdout
