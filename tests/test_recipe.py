"""`unitok train`: a recipe (configs/recipes/*.yaml) run stage by stage into one run folder.

The parts first: reading a recipe, a ``--budget``, and composing a stage's training config so that
every output lands in the run folder. Then one tiny recipe, composed from the shipped configs, runs
end to end on a dozen generated photos, runs again (nothing to do) and trains on with a larger
budget. Last, the mistakes ``unitok train`` refuses with one line before doing anything.
"""

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from generation.pipeline import UniTokPipeline
from unitok.cli import main
from unitok.commands._recipe import (
    OUTPUT_KEYS,
    compose_config,
    load_recipe,
    max_time_string,
    merge_configs,
    parse_budget,
    place_outputs,
    seconds_of,
    write_config,
)
from unitok.commands.train import RecipeRun, command_flags
from unitok.data.shards import iterate_samples
from unitok.errors import UserError
from unitok.lightning_runs import read_checkpoint, training_seconds

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PHOTO128 = str(CONFIGS / "tokenizer" / "photo128.yaml")
SHAPES_TINY = str(CONFIGS / "lm" / "shapes-tiny.yaml")
MINIMAL = {"tokenizer": {"configs": [PHOTO128]}, "lm": {"configs": [SHAPES_TINY]}}
DROP = "<drop this section>"


def write_recipe(folder: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def outputs(config) -> list[str]:
    """Every value of the config (at any depth) under a key that names where a run writes."""
    if isinstance(config, list):
        return [path for item in config for path in outputs(item)]
    if not isinstance(config, dict):
        return []
    return [path for key, value in config.items()
            for path in ([str(value)] if key in OUTPUT_KEYS else outputs(value))]


def checkpoint_callback(config: dict) -> dict:
    return next(c["init_args"] for c in config["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint"))


# -- the recipe --------------------------------------------------------------------------------


def test_a_recipe_names_each_stage_configs_and_budget(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "lm.yaml").write_text("trainer: {max_steps: 10}\n")
    recipe = load_recipe(write_recipe(tmp_path, {
        "seed": 3, "data": {"size": 64, "val_fraction": 0.1},
        "tokenizer": {"configs": PHOTO128, "max_time": "1:30:00", "max_steps": -1},  # one config: a string
        "lm": {"configs": ["configs/lm.yaml"], "max_steps": 500, "overrides": {"model": {"bpe_vocab_size": 300}}},
        "assemble": {"guidance": 2.0}}))
    assert recipe.seed == 3 and recipe.source == "folder"
    assert recipe.stages == ("data", "tokenizer", "codes", "lm", "assemble")  # no decoder section, no decoder stage
    assert recipe.tokenizer.configs == (Path(PHOTO128),)
    assert recipe.tokenizer.max_time == "00:01:30:00" and recipe.tokenizer.max_steps == -1
    assert recipe.lm.configs == (tmp_path / "configs" / "lm.yaml",)  # relative to the recipe, not the cwd
    assert recipe.lm.max_time is None and recipe.lm.overrides == {"model": {"bpe_vocab_size": 300}}
    assert recipe.assemble == {"guidance": 2.0} and recipe.codes == {}


@pytest.mark.parametrize("name", ["photos", "shapes"])
def test_both_shipped_recipes_load_and_every_config_lands_in_the_run_folder(tmp_path, name):
    recipe = load_recipe(CONFIGS / "recipes" / f"{name}.yaml")
    run_dir = tmp_path / "run"
    run = RecipeRun(recipe, run_dir, recipe.seed, {}, ["--images", "photos"] if name == "photos" else [])
    run.check(recipe.stages)  # every stage composes; the codes and assemble sections are flags their commands take
    training = [stage for stage in recipe.stages if stage in ("tokenizer", "decoder", "lm")]
    assert training == (["tokenizer", "lm"] if name == "photos" else ["tokenizer", "decoder", "lm"])
    for stage in training:
        config = run.config(stage)
        assert outputs(config) and all(path.startswith(str(run_dir / stage)) for path in outputs(config))
        data = "codes" if stage == "lm" else "data"
        assert config["data"]["train_shards"] == str(run_dir / data / "train")
        assert config["data"]["val_shards"] == str(run_dir / data / "val")
    assert run.config("lm")["model"]["image_tokenizer"] == str(run_dir / "tokenizer" / "export")
    if name == "photos":  # wall-clock budgets
        assert run.config("tokenizer")["trainer"]["max_time"] == "00:00:30:00"
        assert run.config("tokenizer")["trainer"]["max_steps"] == -1
    else:  # the configs' own budgets; the decoder starts from the tokenizer
        assert run.config("decoder")["model"]["pretrained"] == str(run_dir / "tokenizer" / "export")
        assert run.config("decoder")["trainer"]["max_steps"] == 4000
    assert not run_dir.exists()  # checking writes nothing


@pytest.mark.parametrize("name", ["photos", "shapes"])
def test_the_shipped_recipes_compose_configs_their_lightning_cli_takes(tmp_path, capsys, name):
    recipe = load_recipe(CONFIGS / "recipes" / f"{name}.yaml")
    run = RecipeRun(recipe, tmp_path / "run", recipe.seed, {}, [])
    for stage in ("tokenizer", "decoder", "lm") if recipe.decoder else ("tokenizer", "lm"):
        path = tmp_path / f"{stage}.yaml"
        write_config(run.config(stage), path, "composed for the test")
        with pytest.raises(SystemExit) as exit_info:
            main(["lm" if stage == "lm" else "tokenizer", "fit", "--config", str(path), "--print_config"])
        assert exit_info.value.code == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["trainer"]["default_root_dir"] == str(tmp_path / "run" / stage)
        assert checkpoint_callback(printed)["dirpath"] == str(tmp_path / "run" / stage / "checkpoints")


@pytest.mark.parametrize(("changes", "message"), [
    ({"epochs": 3}, "unknown key 'epochs'; the keys are seed, data, tokenizer, decoder, codes, lm, assemble"),
    ({"tokenizer": DROP}, "has no 'tokenizer' section"),
    ({"lm": DROP}, "has no 'lm' section"),
    ({"lm": None}, "has no 'lm' section"),
    ({"lm": {"configs": ["missing.yaml"]}}, "lm.configs: no config file"),
    ({"lm": {"configs": []}}, "lm.configs must list one or more config files"),
    ({"lm": {"configs": [SHAPES_TINY], "lr": 0.1}}, "lm: unknown key 'lr'; the keys are configs, max_steps,"),
    *[({"lm": {"configs": [SHAPES_TINY], "max_steps": steps}}, "lm.max_steps must be a positive number of steps")
      for steps in (0, -2, "10", 1.5, True)],
    ({"tokenizer": {"configs": [PHOTO128], "max_time": "30 minutes"}}, "tokenizer.max_time must be a duration HH:MM:SS"),
    ({"tokenizer": {"configs": [PHOTO128], "max_time": "00:00:00"}}, "must be longer than 0 seconds"),
    ({"tokenizer": {"configs": [PHOTO128], "overrides": ["trainer"]}}, "tokenizer.overrides must be a mapping"),
    ({"data": {"source": "imagenet"}}, "data.source must be one of folder, shapes, got 'imagenet'"),
    ({"data": {"resize": 64}}, "data: unknown key 'resize'; the keys are source, size, val_fraction"),
    ({"data": {"source": "shapes", "num": 100}}, "data.num and data.val_num (Shapes scenes to train and validate on)"),
    ({"codes": {"out": "codes"}}, "codes.out is set by `unitok train`"),
    ({"seed": "zero"}, "seed must be an integer, got 'zero'"),
])
def test_recipe_mistakes_are_one_line_errors(tmp_path, changes, message):
    recipe = {**copy.deepcopy(MINIMAL), **changes}
    path = write_recipe(tmp_path, {key: value for key, value in recipe.items() if value != DROP})
    with pytest.raises(UserError) as error:
        load_recipe(path)
    assert message in str(error.value) and str(path) in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("text", "message"), [
    (None, "cannot read the recipe"),
    ("tokenizer: [unclosed", "is not valid YAML"),
    ("- tokenizer\n- lm\n", "must be a mapping with the sections seed, data"),
    (f"tokenizer: {{configs: [{PHOTO128}]}}\nlm:\n  configs: [{SHAPES_TINY}]\n  max_time: 1:30:00\n",
     "lm.max_time must be a duration HH:MM:SS (or DD:HH:MM:SS), got 5400 (an unquoted 1:30:00 in YAML is that "
     "number: quote it)"),
])
def test_a_recipe_that_is_not_readable_yaml_is_a_one_line_error(tmp_path, text, message):
    path = tmp_path / "recipe.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError, match="^[^\n]*$") as error:
        load_recipe(path)
    assert message in str(error.value)


def test_durations_and_budgets():
    assert max_time_string("00:30:00", "x") == "00:00:30:00"
    assert max_time_string("36:00:00", "x") == "00:36:00:00"  # hours past a day stay hours
    assert max_time_string("1:02:03:04", "x") == "01:02:03:04"
    assert seconds_of("00:01:30:00") == 5400 and seconds_of({"hours": 2}) == 7200 and seconds_of(None) is None
    assert parse_budget("lm=2000") == ("lm", "max_steps", 2000)
    assert parse_budget("tokenizer=1:00:00") == ("tokenizer", "max_time", "00:01:00:00")
    assert parse_budget("decoder=2:12:00:00") == ("decoder", "max_time", "02:12:00:00")
    for text, message in (("lm", "expected STAGE=HH:MM:SS or STAGE=STEPS"),
                          ("codes=5", "with STAGE one of tokenizer, decoder, lm"),
                          ("lm=0", "the number of steps must be at least 1"),
                          ("lm=soon", "--budget lm must be a duration HH:MM:SS"),
                          ("lm=00:00:00", "must be longer than 0 seconds")):
        with pytest.raises(UserError, match="^[^\n]*$") as error:
            parse_budget(text)
        assert message in str(error.value)


def test_a_recipe_section_becomes_the_flags_of_its_command():
    assert command_flags({"val_fraction": 0.1, "fp16": True, "top_k": None, "rewrite_prompts": False,
                          "class_template": "a photo of a {}"}) == \
        ["--val-fraction", "0.1", "--fp16", "--class-template", "a photo of a {}"]


def test_train_help_shows_the_stages_without_importing_heavy_libraries():
    code = ("import sys, contextlib, io\n"
            "from unitok.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try: main(['train', '--help'])\n"
            "    except SystemExit: pass\n"
            "print(out.getvalue()); print('HEAVY', [m for m in ('torch', 'lightning') if m in sys.modules])\n")
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in printed
    assert "RUN/stages/<stage>.json" in printed and "--budget STAGE=HH:MM:SS" in printed


# -- composing a stage's training config -------------------------------------------------------


def test_configs_merge_as_lightning_cli_merges_them():
    base = {"trainer": {"max_steps": 10, "callbacks": [{"class_path": "A"}, {"class_path": "B"}]},
            "model": {"class_path": "m.Net", "init_args": {"width": 8, "depth": 2}},
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.1, "betas": [0.9, 0.99]}}}
    before = copy.deepcopy(base)
    merged = merge_configs(base, {
        "trainer": {"callbacks": [{"class_path": "C"}]},  # a list is replaced, not extended
        "model": {"class_path": "m.Net", "init_args": {"width": 16}},  # the same class: its arguments merge
        "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}},  # another class: replaced whole
        "data": {"batch_size": 4}})
    assert merged == {"trainer": {"max_steps": 10, "callbacks": [{"class_path": "C"}]},
                      "model": {"class_path": "m.Net", "init_args": {"width": 16, "depth": 2}},
                      "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}},
                      "data": {"batch_size": 4}}
    assert base == before  # the inputs are left as they were


def test_a_composed_config_writes_only_into_the_run_folder_and_reads_the_runs_inputs(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, {**MINIMAL, "tokenizer": {
        "configs": [PHOTO128], "max_steps": 100, "max_time": "00:10:00",
        "overrides": {"model": {"tokenizer": {"image_size": 64}},
                      "trainer": {"default_root_dir": "elsewhere",  # overrides cannot move an output out
                                  "profiler": {"class_path": "lightning.pytorch.profilers.SimpleProfiler",
                                               "init_args": {"dirpath": "profiles", "filename": "perf"}}}}}}))
    out = tmp_path / "run" / "tokenizer"
    config = compose_config(recipe.tokenizer, out_dir=out, seed=7, budget={"max_steps": 300},
                            inputs={"data.train_shards": "RUN/data/train", "data.val_shards": "RUN/data/val"})
    trainer = config["trainer"]
    assert trainer["default_root_dir"] == str(out)
    assert "logger" not in trainer  # unitok.lightning_runs puts the CSV logs in default_root_dir/logs
    assert trainer["profiler"]["init_args"] == {"dirpath": str(out), "filename": "perf"}
    assert checkpoint_callback(config) == {"dirpath": str(out / "checkpoints"), "save_last": True,
                                           "enable_version_counter": False, "every_n_train_steps": 250,
                                           "save_top_k": -1}  # photo128's own settings kept
    assert sorted(set(outputs(config))) == [str(out), str(out / "checkpoints")]
    assert trainer["max_steps"] == 300 and trainer["max_time"] == "00:00:10:00"  # the command line's, else the recipe's
    assert config["seed_everything"] == 7
    assert config["data"]["train_shards"] == "RUN/data/train" and config["data"]["val_shards"] == "RUN/data/val"
    assert config["model"]["tokenizer"]["image_size"] == 64 and config["model"]["tokenizer"]["codebook_size"] == 1024


def test_a_config_without_a_model_checkpoint_gets_one_that_keeps_last_ckpt(tmp_path):
    trainer = {"enable_checkpointing": False,
               "callbacks": {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"}}  # one, not a list
    place_outputs(trainer, tmp_path)
    assert trainer["enable_checkpointing"] is True  # export and resume read last.ckpt
    assert trainer["callbacks"] == [
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"},
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(tmp_path / "checkpoints"), "save_last": True, "enable_version_counter": False}}]


# -- a tiny recipe, end to end -----------------------------------------------------------------

# The shipped photo128 and shapes-tiny configs made tiny: a 16 px tokenizer with a 4x4 grid of 32
# codes, a one-layer LM, two steps each. The tokenizer has a time cap too (the last part of the
# end-to-end test raises it).
TINY_RECIPE = {
    "seed": 0,
    "data": {"size": 16},
    "tokenizer": {"configs": [PHOTO128], "max_steps": 2, "max_time": "01:00:00", "overrides": {
        "trainer": {"val_check_interval": 2, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "enable_model_summary": False},
        "model": {"tokenizer": {"image_size": 16, "block_out_channels": [8, 16, 16], "norm_num_groups": 4,
                                "latent_channels": 8, "codebook_size": 32, "codebook_dim": 4}, "warmup_steps": 1},
        "data": {"image_size": 16, "batch_size": 4, "samples_per_epoch": 8, "num_workers": 0}}},
    "codes": {"batch_size": 8},
    "lm": {"configs": [SHAPES_TINY], "max_steps": 2, "overrides": {
        "trainer": {"accelerator": "cpu", "val_check_interval": 2, "log_every_n_steps": 1,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "model": {"bpe_vocab_size": 300, "warmup_steps": 1,
                  "scratch": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 2,
                              "intermediate_size": 64, "max_positions": 64}},
        "data": {"batch_size": 4, "samples_per_epoch": 8, "val_samples": 4, "text_to_image": 0.5, "paraphrase": 0.5,
                 "normal_form": 0.0, "rewriting": 0.0, "answering": 0.0, "verifying": 0.0, "editing": 0.0}}},
    "assemble": {"guidance": 1.0},
}
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 20)}


def write_photos(folder: Path) -> None:
    """``folder/photos``: 12 photos of a coloured background with a white square; ``captions.jsonl``."""
    (folder / "photos").mkdir()
    lines = []
    for index in range(12):
        colour = list(COLOURS)[index % 4]
        image = Image.new("RGB", (40, 36), COLOURS[colour])
        image.paste((255, 255, 255), (3 * (index // 4), 4, 3 * (index // 4) + 14, 18))
        image.save(folder / "photos" / f"photo{index:02d}.png")
        lines.append(json.dumps({"file": f"photo{index:02d}.png", "caption": f"a white square on {colour}"}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")


def train(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["train", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files(folder: Path) -> dict[Path, int]:
    """Every file under ``folder`` and when it was last written."""
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


def global_step(run: Path, stage: str) -> int:
    return read_checkpoint(run / stage / "checkpoints" / "last.ckpt", written_by="test")["global_step"]


def test_a_tiny_recipe_runs_end_to_end_then_resumes_stage_by_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a relative output left out of RUN would land here
    write_photos(tmp_path)
    write_recipe(tmp_path, TINY_RECIPE, "tiny.yaml")
    command = ["--images", "photos", "--captions", "captions.jsonl", "--out", "RUN", "--config", "tiny.yaml",
               "--val-fraction", "0.25"]
    run = tmp_path / "RUN"

    # Some stages first; a stage whose input is not made yet is refused before anything runs.
    code, _, err = train(capsys, *command, "--stages", "data,tokenizer")
    assert code == 0, err
    assert sorted(p.stem for p in (run / "stages").iterdir()) == ["data", "tokenizer"]
    code, _, err = train(capsys, *command, "--stages", "lm")
    assert code == 2
    assert err.strip() == ("unitok train: error: the lm stage needs the codes stage's output, which is not done yet "
                           "(RUN/stages/codes.json); add codes to --stages")

    # The rest: the stages done before are skipped, the others run in order.
    code, out, err = train(capsys, *command)
    assert code == 0, err
    assert "[1/5] data: done before" in err and "[2/5] tokenizer: done before" in err
    assert "[3/5] codes (not done yet)" in err and "[5/5] assemble (not done yet)" in err
    assert "   $ unitok lm fit --config RUN/configs/lm.yaml" in err  # each stage shows its command
    summary = out[out.rindex("run RUN ("):].splitlines()  # last, after what the stages' commands printed
    assert [line.split()[:2] for line in summary[1:6]] == [
        ["data", "done"], ["tokenizer", "done"], ["codes", "ran"], ["lm", "ran"], ["assemble", "ran"]]
    assert "  unitok caption IMAGE --model RUN/pipeline" in summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RUN", "captions.jsonl", "photos", "tiny.yaml"]
    assert sorted(p.name for p in run.iterdir()) == ["codes", "configs", "data", "lm", "pipeline", "stages",
                                                    "tokenizer"]
    train_images, val_images = (len(list(iterate_samples(run / "data" / split))) for split in ("train", "val"))
    assert train_images + val_images == 12 and val_images >= 1  # held out by a hash of each path
    assert json.loads((run / "stages" / "data.json").read_text())["commands"] == [
        "unitok data folder --images photos --captions captions.jsonl --size 16 --val-fraction 0.25 "
        "--out RUN/data --seed 0"]
    for stage in ("tokenizer", "lm"):  # the configs it trained with, to repeat a stage by hand
        config = yaml.safe_load((run / "configs" / f"{stage}.yaml").read_text())
        assert all(path.startswith(str(run / stage)) for path in outputs(config))
        assert config["trainer"]["max_steps"] == 2 and global_step(run, stage) == 2
    assert yaml.safe_load((run / "configs" / "lm.yaml").read_text())["model"]["image_tokenizer"] == \
        str(run / "tokenizer" / "export")

    pipe = UniTokPipeline.from_pretrained(run / "pipeline")
    assert pipe.image_tokenizer.grid_size == (4, 4) and pipe.config.default_guidance_scale == 1.0
    drawing = pipe("a white square on red", generator=torch.Generator().manual_seed(0)).images[0]
    assert drawing.size == (16, 16)
    [caption] = pipe.caption([Image.open(tmp_path / "photos" / "photo00.png")], max_new_tokens=4)
    assert isinstance(caption, str)

    # The same command again: every stage is done, nothing is run or written.
    before = files(run)
    code, out, err = train(capsys, *command)
    assert code == 0, err
    assert all(f"{stage}: done before" in err for stage in ("data", "tokenizer", "codes", "lm", "assemble"))
    assert "$ unitok" not in err and "ran in" not in out
    assert files(run) == before

    # A larger LM budget: the LM trains on from its checkpoint, the pipeline is assembled again.
    code, out, err = train(capsys, *command, "--budget", "lm=4")
    assert code == 0, err
    assert "[4/5] lm (its budget is raised (2 steps, 3 h 00 min -> 4 steps, 3 h 00 min))" in err
    assert "$ unitok lm fit --config RUN/configs/lm.yaml --ckpt_path RUN/lm/checkpoints/last.ckpt" in err
    assert global_step(run, "lm") == 4
    after = files(run)
    for unchanged in ("stages/data.json", "stages/tokenizer.json", "stages/codes.json",
                      "tokenizer/checkpoints/last.ckpt", "configs/tokenizer.yaml"):
        assert after[run / unchanged] == before[run / unchanged], unchanged
    assert after[run / "stages" / "assemble.json"] > before[run / "stages" / "assemble.json"]
    assert after[run / "pipeline" / "lm" / "model.safetensors"] > before[run / "pipeline" / "lm" / "model.safetensors"]
    assert json.loads((run / "stages" / "lm.json").read_text())["budget"]["max_steps"] == 4

    # A larger time cap for a stage its step limit stopped trains nothing: no stage is redone.
    before = files(run)
    code, out, err = train(capsys, *command, "--budget", "tokenizer=02:00:00")
    assert code == 0, err
    assert "tokenizer: RUN/tokenizer/checkpoints/last.ckpt has trained all 2 steps of trainer.max_steps, so " \
           "--budget tokenizer (2 steps, 1 h 00 min -> 2 steps, 2 h 00 min) trains nothing more" in err
    assert "$ unitok" not in err and files(run) == before


@pytest.mark.slow
def test_a_killed_run_and_a_time_capped_stage_go_on_where_they_stopped(tmp_path, monkeypatch, capsys):
    """``unitok train`` killed (SIGKILL) in the middle of the LM stage, started again with the same
    command: it resumes from the LM's last.ckpt and finishes within the stage's time cap; a larger
    time cap then trains the LM on from there."""
    monkeypatch.chdir(tmp_path)
    write_photos(tmp_path)
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["lm"]["max_steps"] = -1  # the time cap decides
    recipe["lm"]["overrides"]["trainer"].update(val_check_interval=1000, limit_val_batches=0)
    recipe["lm"]["overrides"]["trainer"]["callbacks"] = [{
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"save_last": True, "save_top_k": 0, "every_n_train_steps": 5}}]
    write_recipe(tmp_path, recipe, "tiny.yaml")
    command = ["--images", "photos", "--captions", "captions.jsonl", "--out", "RUN", "--config", "tiny.yaml",
               "--val-fraction", "0.25", "--budget", "lm=00:00:15"]
    run = tmp_path / "RUN"
    last = run / "lm" / "checkpoints" / "last.ckpt"

    process = subprocess.Popen([sys.executable, "-m", "unitok.cli", "train", *command],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):  # the LM's first checkpoint, within 2 minutes
            if last.is_file() or process.poll() is not None:
                break
            time.sleep(0.1)
        assert last.is_file() and process.poll() is None, "the LM stage did not write a checkpoint in time"
        process.kill()
    finally:
        process.kill()
        process.wait()
    steps_at_kill = global_step(run, "lm")
    assert not (run / "stages" / "lm.json").exists()

    code, out, err = train(capsys, *command)
    assert code == 0, err
    assert "[4/5] lm (not done yet)" in err and f"lm: resuming from RUN/lm/checkpoints/last.ckpt (step {steps_at_kill}" in err
    assert "$ unitok lm fit --config RUN/configs/lm.yaml --ckpt_path RUN/lm/checkpoints/last.ckpt" in err
    steps_capped = global_step(run, "lm")
    assert steps_capped > steps_at_kill
    elapsed = training_seconds(read_checkpoint(last, written_by="test"))
    assert 15 <= elapsed < 25  # the cap counts the time before the kill too

    code, out, err = train(capsys, *command)  # the cap is spent: done, nothing runs
    assert code == 0 and "lm: done before" in err and "$ unitok" not in err

    code, out, err = train(capsys, *[*command[:-1], "lm=00:00:25"])
    assert code == 0, err
    assert "[4/5] lm (its budget is raised" in err and "--ckpt_path RUN/lm/checkpoints/last.ckpt" in err
    assert global_step(run, "lm") > steps_capped
    assert "[5/5] assemble" in err


# -- what unitok train refuses -----------------------------------------------------------------


def folder_recipe(folder: Path, name: str, **sections) -> str:
    """A recipe for image folders, 10 % held out, with ``sections`` changed."""
    folder.mkdir(exist_ok=True)
    return str(write_recipe(folder, {**MINIMAL, "data": {"val_fraction": 0.1}, **sections}, f"{name}.yaml"))


@pytest.mark.parametrize(("args", "message"), [
    (["--images", "photos", "--out", "{tmp}/not-a-run"],
     "--out {tmp}/not-a-run is not empty and is not a `unitok train` run (no {tmp}/not-a-run/stages)"),
    (["--images", "photos", "--out", "{tmp}/not-a-run/notes.txt"], "is a file; pass a folder for the run"),
    (["--images", "photos", "--stages", "data,paint"],
     "--stages: unknown stage 'paint'; the recipe {photos} has data,tokenizer,codes,lm,assemble"),
    (["--images", "photos", "--stages", "decoder"], "unknown stage 'decoder'"),  # the photos recipe has none
    (["--images", "photos", "--stages", ","], "--stages is empty"),
    (["--images", "photos", "--stages", "lm"],
     "the lm stage needs the tokenizer stage's output, which is not done yet ({tmp}/run/stages/tokenizer.json); "
     "add tokenizer to --stages"),
    (["--images", "photos", "--stages", "data", "--budget", "lm=500"], "the lm stage is not run (--stages data)"),
    (["--images", "photos", "--budget", "lm=0"], "the number of steps must be at least 1"),
    (["--config", "{shapes}", "--images", "photos"], "makes its own Shapes scenes (data.source: shapes)"),
    (["--config", "{shapes}", "--val-fraction", "0.1"], "--val-fraction are not used"),
    ([], "pass --images DIR (and --captions FILE): the data stage makes shards of your images"),
    (["--images", "photos", "--config", "{no_val}"], "training needs held-out images: pass --val-fraction F"),
    (["--images", "photos", "--config", "{bad_assemble}"],
     "the recipe's assemble section has a setting `unitok assemble` does not take: unrecognized arguments: "
     "--colour red"),
    (["--images", "photos", "--config", "{bad_codes}"],
     "the recipe's codes section has a setting `unitok tokenize` does not take: argument --batch-size: "
     "invalid int value: 'many'"),
    (["--config", "{tmp}/missing.yaml"], "cannot read the recipe {tmp}/missing.yaml"),
])
def test_mistakes_are_refused_with_one_line_before_anything_is_written(tmp_path, capsys, args, message):
    (tmp_path / "not-a-run").mkdir()
    (tmp_path / "not-a-run" / "notes.txt").write_text("mine")
    places = {"tmp": tmp_path, "photos": CONFIGS / "recipes" / "photos.yaml",
              "shapes": CONFIGS / "recipes" / "shapes.yaml",
              "no_val": folder_recipe(tmp_path / "recipes", "no_val", data={"size": 16}),
              "bad_assemble": folder_recipe(tmp_path / "recipes", "bad_assemble",
                                            assemble={"guidance": 2.0, "colour": "red"}),
              "bad_codes": folder_recipe(tmp_path / "recipes", "bad_codes", codes={"batch_size": "many"})}
    args = [arg.format(**places) for arg in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "run")]
    code, out, err = train(capsys, *args)
    assert code == 2
    assert err.startswith("unitok train: error: ") and message.format(**places) in err
    assert len(err.strip().splitlines()) == 1 and not out
    assert not (tmp_path / "run").exists()
    assert [p.name for p in (tmp_path / "not-a-run").iterdir()] == ["notes.txt"]


def test_a_stage_that_fails_leaves_a_run_folder_that_the_same_command_goes_on_in(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "notes.txt").write_text("no photos yet")
    args = ["--images", str(tmp_path / "photos"), "--out", str(tmp_path / "run"), "--stages", "data",
            "--config", folder_recipe(tmp_path / "recipes", "photos", data={"size": 16, "val_fraction": 0.5})]
    code, _, err = train(capsys, *args)
    assert code == 2 and err.strip().endswith(f"error: --images {tmp_path / 'photos'} holds no jpg, png or webp "
                                              "images; other files: 1 (notes.txt)")
    assert (tmp_path / "run" / "stages").is_dir() and not (tmp_path / "run" / "stages" / "data.json").exists()
    for index in range(4):
        Image.new("RGB", (20, 20), (60 * index, 90, 120)).save(tmp_path / "photos" / f"photo{index}.png")
    code, out, err = train(capsys, *args)
    assert code == 0, err
    assert "[1/5] data (not done yet)" in err and (tmp_path / "run" / "stages" / "data.json").is_file()


def test_without_the_source_checkout_the_default_recipe_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import unitok.commands.train as train_command

    monkeypatch.setattr(train_command, "DEFAULT_RECIPE", tmp_path / "configs" / "recipes" / "photos.yaml")
    (tmp_path / "photos").mkdir()
    code = main(["train", "--images", str(tmp_path / "photos"), "--out", str(tmp_path / "run")])  # no --config
    err = capsys.readouterr().err
    assert code == 2 and "come with a source checkout of UniTok" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
