"""``unitok train``: the whole recipe on your images, one stage after the other, every output in RUN/.

    unitok train --images DIR [--captions FILE] --out RUN [--config RECIPE] [--stages LIST] [--budget STAGE=HH:MM:SS]

Each stage runs its own subcommand, in this process, and prints it, so any stage can be repeated
by hand (``RUN/stages/<stage>.json`` keeps the commands):

    data       unitok data folder ... --out RUN/data                 -> RUN/data/train, RUN/data/val
    tokenizer  unitok tokenizer fit --config RUN/configs/tokenizer.yaml, then export -> RUN/tokenizer/export
    decoder    (recipes that have one) the decoder trained on alone   -> RUN/decoder/export
    codes      unitok tokenize ...                                    -> RUN/codes/train, RUN/codes/val
    lm         unitok lm fit --config RUN/configs/lm.yaml, then export -> RUN/lm/export
    assemble   unitok assemble ...                                    -> RUN/pipeline

Resuming is stage by stage: a stage is done when its marker ``RUN/stages/<stage>.json`` exists (written
last, atomically) and is newer than the markers of the stages it reads; run the same command again
and it goes on where it stopped. A training stage stopped midway resumes from its ``last.ckpt``
(step, optimizer, and the time already spent, so the learning-rate schedule continues); one whose
checkpoint has used its whole budget is exported as it is. ``--budget`` larger than a finished
stage's trains it on from its checkpoint, and the stages after it are redone.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from unitok.commands._recipe import (
    TRAINING_STAGES,
    Recipe,
    compose_config,
    load_recipe,
    parse_budget,
    seconds_of,
    write_config,
)
from unitok.commands.data import _InOrder
from unitok.errors import UserError
from unitok.run_layout import CHECKPOINTS, LAST_CHECKPOINT

DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "photos.yaml"
NEXT_PROMPT = "a photo of a dog on a beach"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 2)[2]  # the stages and how a run resumes
    parser.add_argument("--images", action=_InOrder, dest="inputs", metavar="DIR",
                        help="folder of images (searched recursively); repeatable, as in `unitok data folder`")
    parser.add_argument("--captions", action=_InOrder, dest="inputs", metavar="FILE",
                        help="captions of the folder before it: JSONL, CSV or COCO JSON (else the folder's "
                             "HF metadata.jsonl, or --class-template)")
    parser.add_argument("--val-images", action=_InOrder, dest="inputs", metavar="DIR",
                        help="a held-out folder (instead of the recipe's data.val_fraction)")
    parser.add_argument("--class-template", metavar="TEMPLATE",
                        help='caption images from their folder names, e.g. "a photo of a {}"')
    parser.add_argument("--val-fraction", type=float, metavar="F",
                        help="fraction of the images held out for validation (default: the recipe's)")
    parser.add_argument("--out", required=True, metavar="RUN", help="the run folder: every output goes here")
    parser.add_argument("--config", default=str(DEFAULT_RECIPE), metavar="RECIPE",
                        help="the recipe (default: configs/recipes/photos.yaml; configs/recipes/shapes.yaml "
                             "is the embedded default's)")
    parser.add_argument("--stages", metavar="LIST",
                        help="comma-separated stages to run (default: all of the recipe's): "
                             "data,tokenizer[,decoder],codes,lm,assemble")
    parser.add_argument("--budget", action="append", default=[], metavar="STAGE=HH:MM:SS",
                        help="a training stage's budget: STAGE=HH:MM:SS sets its trainer.max_time, STAGE=N its "
                             "trainer.max_steps (STAGE: tokenizer, decoder, lm); repeatable")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the data split and of every training stage (default: the recipe's)")


def run(args: argparse.Namespace) -> int:
    if args.config == str(DEFAULT_RECIPE) and not DEFAULT_RECIPE.is_file():
        raise UserError(f"the default recipe {DEFAULT_RECIPE} is not here: the recipes and configs come with a "
                        "source checkout of UniTok (configs/); pass --config RECIPE with your own recipe")
    recipe = load_recipe(args.config)
    stages = _selected_stages(args.stages, recipe)
    budgets = _budgets(args.budget, stages)
    run_dir = _check_run_folder(Path(args.out))
    seed = recipe.seed if args.seed is None else args.seed
    recipe_run = RecipeRun(recipe, run_dir, seed, budgets, _data_flags(args, recipe))
    recipe_run.check(stages)
    recipe_run.run(stages)
    print(recipe_run.summary())
    return 0


def _selected_stages(text: str | None, recipe: Recipe) -> tuple[str, ...]:
    if text is None:
        return recipe.stages
    stages = [stage.strip() for stage in text.split(",") if stage.strip()]
    for stage in stages:
        if stage not in recipe.stages:
            raise UserError(f"--stages: unknown stage {stage!r}; the recipe {recipe.path} has "
                            f"{','.join(recipe.stages)}")
    if not stages:
        raise UserError("--stages is empty; name one or more of " + ",".join(recipe.stages))
    return tuple(stage for stage in recipe.stages if stage in stages)


def _budgets(texts: list[str], stages: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    budgets: dict[str, dict[str, Any]] = {}
    for text in texts:
        stage, key, value = parse_budget(text)
        if stage not in stages:
            raise UserError(f"--budget {text}: the {stage} stage is not run (--stages {','.join(stages)})")
        budgets.setdefault(stage, {})[key] = value
    return budgets


def _check_run_folder(root: Path) -> Path:
    """``root``, checked to be a run folder: new, empty, or one that ``unitok train`` made (its
    stages' outputs are replaced when they are redone, so never a folder holding anything else).
    ``RecipeRun.run`` makes it, so a refused command leaves nothing behind."""
    if root.exists() and not root.is_dir():
        raise UserError(f"--out {root} is a file; pass a folder for the run")
    if root.is_dir() and any(root.iterdir()) and not (root / "stages").is_dir():
        raise UserError(f"--out {root} is not empty and is not a `unitok train` run (no {root}/stages); "
                        "pass a new folder")
    return root


def _data_flags(args: argparse.Namespace, recipe: Recipe) -> list[str]:
    """What `unitok data folder` is given besides --out and the recipe's settings: the image
    folders and caption files in command-line order, and the split options."""
    inputs = [part for flag, value in (args.inputs or []) for part in (flag, value)]
    if recipe.source == "shapes":
        if inputs or args.class_template or args.val_fraction is not None:
            raise UserError(f"the recipe {recipe.path} makes its own Shapes scenes (data.source: shapes); "
                            "--images, --captions, --val-images, --class-template and --val-fraction are not used")
        return []
    options = {key: value for key, value in recipe.data.items() if key != "source"}
    if args.class_template is not None:
        options["class_template"] = args.class_template
    if args.val_fraction is not None:
        options["val_fraction"] = args.val_fraction
    if "--val-images" in inputs:
        options.pop("val_fraction", None)
    elif not options.get("val_fraction"):
        raise UserError("training needs held-out images: pass --val-fraction F (e.g. 0.1) or --val-images DIR, "
                        f"or set data.val_fraction in {recipe.path}")
    return [*inputs, *command_flags(options)]


def command_flags(options: dict[str, Any]) -> list[str]:
    """A recipe section as command-line flags: ``{val_fraction: 0.1, fp16: true}`` ->
    ``--val-fraction 0.1 --fp16`` (false and null leave the flag out)."""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not None and value is not False:
            flags += [flag, str(value)]
    return flags


class RecipeRun:
    """One run of a recipe into ``root``: which stages to run, running them, and what was done.

    Each stage method returns the commands it ran (for its marker) after running them with
    ``run_command``; the stage is done when ``_mark_done`` has written its marker.
    """

    def __init__(self, recipe: Recipe, root: Path, seed: int, budgets: dict[str, dict[str, Any]],
                 data_flags: list[str]):
        self.recipe, self.root, self.seed, self.budgets, self.data_flags = recipe, root, seed, budgets, data_flags
        self.drawing_stage = "decoder" if recipe.decoder else "tokenizer"  # whose export decodes images
        self.ran: dict[str, float] = {}  # stage -> seconds it took in this invocation
        self.start = time.perf_counter()
        self.notes: list[str] = []  # what ``check`` found worth saying, said once the run starts

    # -- where things are --------------------------------------------------------------------

    def marker(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def export_dir(self, stage: str) -> Path:
        return self.root / stage / "export"

    def last_checkpoint(self, stage: str) -> Path:
        return self.root / stage / CHECKPOINTS / LAST_CHECKPOINT

    def shards(self, kind: str, split: str) -> Path:
        return self.root / kind / split

    def needs(self, stage: str) -> tuple[str, ...]:
        """The stages whose outputs ``stage`` reads."""
        return {"data": (), "tokenizer": ("data",), "decoder": ("data", "tokenizer"), "codes": ("data", "tokenizer"),
                "lm": ("tokenizer", "codes"), "assemble": ("lm", self.drawing_stage)}[stage]

    # -- deciding ------------------------------------------------------------------------------

    def why_run(self, stage: str) -> str | None:
        """Why ``stage`` has to run, or None when its output is up to date."""
        marker = self.marker(stage)
        if not marker.is_file():
            return "not done yet"
        for need in self.needs(stage):
            if not self.marker(need).is_file() or self.marker(need).stat().st_mtime_ns > marker.stat().st_mtime_ns:
                return f"the {need} stage was redone after it"
        raised = self.raised_budget(stage)
        if raised and self.budget_spent(stage) is None:
            return f"its budget is raised ({raised})"
        return None

    def raised_budget(self, stage: str) -> str | None:
        """``"BEFORE -> NOW"`` when this run's ``--budget`` allows ``stage`` more than it was done with."""
        if stage not in TRAINING_STAGES or stage not in self.budgets or not self.marker(stage).is_file():
            return None
        before, now = self._marker_record(stage)["budget"], self._budget(self.config(stage))
        return f"{_budget_text(before)} -> {_budget_text(now)}" if _raised(now, before) else None

    def budget_spent(self, stage: str) -> str | None:
        """What ``stage``'s ``last.ckpt`` has used up of this run's budget (None: budget left, or no
        checkpoint). A raised time cap trains nothing more when the step limit stopped the stage:
        redoing it would only export the same weights and retrain every stage after it."""
        last = self.last_checkpoint(stage)
        return checkpoint_progress(last, self.config(stage)["trainer"])[1] if last.is_file() else None

    def check(self, stages: tuple[str, ...]) -> None:
        """Refuse, before any work, what would fail later: a stage needing one that is neither
        done nor run now, a folder recipe without images, a recipe setting a command does not take."""
        will_run: set[str] = set()
        for stage in stages:
            if self.why_run(stage) is None and not will_run.intersection(self.needs(stage)):
                continue
            will_run.add(stage)
            for need in self.needs(stage):
                if need not in will_run and self.why_run(need) is not None:
                    raise UserError(f"the {stage} stage needs the {need} stage's output, which is "
                                    f"{self.why_run(need)} ({self.marker(need)}); add {need} to --stages")
        if "data" in will_run and self.recipe.source == "folder" and "--images" not in self.data_flags:
            raise UserError("pass --images DIR (and --captions FILE): the data stage makes shards of your images")
        if "data" not in will_run and "--images" in self.data_flags and "data" in stages:
            self.notes.append(f"data: done before ({self.marker('data')}); --images and --captions are not read "
                              f"again (delete {self.root / 'data'} and {self.marker('data')} to redo it)")
        for stage in TRAINING_STAGES:
            if stage in will_run:
                self.config(stage)  # a recipe or config mistake fails now, not after the stages before it
        _check_flags("tokenize", ["--tokenizer", "T", "--shards", "S", "--out", "O",
                                  *command_flags(self.recipe.codes)], "codes")
        _check_flags("assemble", ["L", "T", "O", *command_flags(self.recipe.assemble)], "assemble")

    # -- running -------------------------------------------------------------------------------

    def run(self, stages: tuple[str, ...]) -> None:
        _say(f"unitok train: recipe {self.recipe.path}, run folder {self.root}, seed {self.seed}")
        for note in self.notes:
            _say(note)
        (self.root / "stages").mkdir(parents=True, exist_ok=True)  # what makes it a run folder
        for number, stage in enumerate(self.recipe.stages, start=1):
            if stage not in stages:
                continue
            reason = self.why_run(stage)
            if reason is None:
                _say(f"== [{number}/{len(self.recipe.stages)}] {stage}: done before "
                     f"({_duration(self._marker_record(stage)['seconds'])}), skipped")
                if self.raised_budget(stage):
                    _say(f"{stage}: {self.last_checkpoint(stage)} has {self.budget_spent(stage)}, so --budget "
                         f"{stage} ({self.raised_budget(stage)}) trains nothing more; raise that limit too "
                         f"(--budget {stage}=STEPS, --budget {stage}=HH:MM:SS)")
                continue
            _say(f"== {datetime.now():%H:%M:%S} [{number}/{len(self.recipe.stages)}] {stage} ({reason})")
            start = time.perf_counter()
            commands = getattr(self, f"_{stage}")()
            self.ran[stage] = time.perf_counter() - start
            self._mark_done(stage, commands)
            _say(f"== {stage} done in {_duration(self.ran[stage])} "
                 f"(total {_duration(time.perf_counter() - self.start)})")

    def _data(self) -> list[list[str]]:
        out = self.root / "data"
        shutil.rmtree(out, ignore_errors=True)  # an interrupted stage's shards; ours (see _run_folder)
        data = self.recipe.data
        if self.recipe.source == "folder":
            return [run_command(["data", "folder", *self.data_flags, "--out", str(out), "--seed", str(self.seed)])]
        common = ["--size", str(data.get("size", 64)), "--seed", str(self.seed),
                  *command_flags({"shard_size": data.get("shard_size")})]
        return [run_command(["data", "shapes", "--out", str(self.shards("data", "train")), "--num", str(data["num"]),
                             *common]),
                run_command(["data", "shapes", "--out", str(self.shards("data", "val")), "--num",
                             str(data["val_num"]), *common, "--split", "val"])]

    def _tokenizer(self) -> list[list[str]]:
        return self._train("tokenizer")

    def _decoder(self) -> list[list[str]]:
        return self._train("decoder")

    def _lm(self) -> list[list[str]]:
        return self._train("lm")

    def _codes(self) -> list[list[str]]:
        commands = []
        for split in ("train", "val"):
            out = self.shards("codes", split)
            shutil.rmtree(out, ignore_errors=True)
            commands.append(run_command(["tokenize", "--tokenizer", str(self.export_dir("tokenizer")),
                                         "--shards", str(self.shards("data", split)), "--out", str(out),
                                         *command_flags(self.recipe.codes)]))
        return commands

    def _assemble(self) -> list[list[str]]:
        return [run_command(["assemble", str(self.export_dir("lm")), str(self.export_dir(self.drawing_stage)),
                             str(self.root / "pipeline"), *command_flags(self.recipe.assemble)])]

    def _train(self, stage: str) -> list[list[str]]:
        """Fit (from the start, or resumed from ``last.ckpt``) and export one training stage."""
        group = "lm" if stage == "lm" else "tokenizer"
        config = self.config(stage)
        config_path = self.root / "configs" / f"{stage}.yaml"
        write_config(config, config_path, f"composed by `unitok train` from {self.recipe.path} "
                                          f"({', '.join(str(p) for p in self.recipe.training_stage(stage).configs)})")
        last = self.last_checkpoint(stage)
        fit = [group, "fit", "--config", str(config_path)]
        commands = []
        if last.is_file() and self._newer_than_needs(last, stage):
            steps, spent = checkpoint_progress(last, config["trainer"])
            if spent:
                _say(f"{stage}: {last} has {spent}: the stage's budget is used up, so it is exported as it is "
                     f"(a larger --budget {stage}=... trains on)")
            else:
                _say(f"{stage}: resuming from {last} (step {steps}; the schedule continues)")
                commands.append(run_command([*fit, "--ckpt_path", str(last)]))
        else:
            if last.is_file():
                _say(f"{stage}: {last} is older than what it was trained on (a stage before it was redone); "
                     "training from the start")
            commands.append(run_command(fit))
        commands.append(run_command([group, "export", str(last), str(self.export_dir(stage))]))
        return commands

    def config(self, stage: str) -> dict[str, Any]:
        """The training config of ``stage`` in this run (``_recipe.compose_config``)."""
        data = "codes" if stage == "lm" else "data"
        inputs = {"data.train_shards": self.shards(data, "train"), "data.val_shards": self.shards(data, "val")}
        if stage == "decoder":
            inputs["model.pretrained"] = self.export_dir("tokenizer")
        if stage == "lm":
            inputs["model.image_tokenizer"] = self.export_dir("tokenizer")
        return compose_config(self.recipe.training_stage(stage), out_dir=(self.root / stage).resolve(),
                              inputs={key: str(path.resolve()) for key, path in inputs.items()},
                              seed=self.seed, budget=self.budgets.get(stage, {}))

    def _newer_than_needs(self, path: Path, stage: str) -> bool:
        mtime = path.stat().st_mtime_ns
        return all(mtime >= self.marker(need).stat().st_mtime_ns for need in self.needs(stage))

    @staticmethod
    def _budget(config: dict[str, Any]) -> dict[str, int | None]:
        trainer = config["trainer"]
        return {"max_steps": trainer.get("max_steps", -1), "max_time_s": seconds_of(trainer.get("max_time"))}

    def _mark_done(self, stage: str, commands: list[list[str]]) -> None:
        from unitok.atomic import atomic_file

        record = {"stage": stage, "seconds": round(self.ran[stage], 1), "finished": datetime.now().isoformat(),
                  "recipe": str(self.recipe.path), "commands": ["unitok " + shlex.join(c) for c in commands]}
        if stage in TRAINING_STAGES:
            record["budget"] = self._budget(self.config(stage))
        with atomic_file(self.marker(stage)) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")

    def _marker_record(self, stage: str) -> dict[str, Any]:
        return json.loads(self.marker(stage).read_text())

    # -- reporting -----------------------------------------------------------------------------

    def outputs(self, stage: str) -> str:
        if stage in ("data", "codes"):
            return f"{self.shards(stage, 'train')}, {self.shards(stage, 'val')}"
        if stage == "assemble":
            return str(self.root / "pipeline")
        return f"{self.export_dir(stage)} (config {self.root / 'configs' / (stage + '.yaml')}, checkpoints and " \
               f"logs in {self.root / stage})"

    def summary(self) -> str:
        lines = [f"run {self.root} ({_duration(time.perf_counter() - self.start)}; recipe {self.recipe.path})"]
        for stage in self.recipe.stages:
            if stage in self.ran:
                status = f"ran in {_duration(self.ran[stage])}"
            elif self.why_run(stage) is None:
                status = f"done before ({_duration(self._marker_record(stage)['seconds'])})"
            else:
                reason = self.why_run(stage)
                lines.append(f"  {stage:<10} " + ("not done" if reason == "not done yet" else f"to redo: {reason}"))
                continue
            lines.append(f"  {stage:<10} {status:<28} {self.outputs(stage)}")
        pipeline = self.root / "pipeline"
        if self.why_run("assemble") is None:
            val = self.shards("data", "val")
            lines += ["next:",
                      f'  unitok generate "{NEXT_PROMPT}" --model {pipeline} --out drawing.png',
                      f"  unitok caption IMAGE --model {pipeline}",
                      f"  unitok serve --model {pipeline}",
                      f"  unitok eval captions --model {pipeline} --shards {val}",
                      f"  unitok eval tokenizer --tokenizer {self.export_dir(self.drawing_stage)} --shards {val}"]
        return "\n".join(lines)


def run_command(argv: list[str]) -> list[str]:
    """``unitok ARGV`` in this process: the command's own parser and ``run``, shown on stderr first.
    A UserError from it reaches ``unitok train``'s caller as it is; an exit (a LightningCLI run
    interrupted, a rejected flag) becomes a UserError saying how to go on. Returns ``argv``."""
    _say("   $ unitok " + shlex.join(argv))
    try:
        code = _command_module(argv[0]).run(_parse(argv[0], argv[1:]))
    except SystemExit as exit_:
        code = exit_.code
    if code not in (0, None):
        raise UserError(f"`unitok {shlex.join(argv[:2])} ...` stopped with exit status {code} (see above); "
                        "once it is fixed, the same `unitok train` command goes on from there")
    return argv


def _command_module(name: str):
    import importlib

    from unitok.cli import COMMANDS

    return importlib.import_module(COMMANDS[name].module)


def _parse(name: str, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"unitok {name}")
    _command_module(name).add_arguments(parser)
    return parser.parse_args(argv)


def _check_flags(name: str, argv: list[str], section: str) -> None:
    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage):
            _parse(name, argv)
    except SystemExit:
        reason = usage.getvalue().strip().rpartition("error: ")[2] or f"see `unitok {name} --help`"
        raise UserError(f"the recipe's {section} section has a setting `unitok {name}` does not take: "
                        f"{reason}") from None


def checkpoint_progress(path: Path, trainer: dict[str, Any]) -> tuple[int, str | None]:
    """The checkpoint's step, and what it has used up of ``trainer``'s max_steps / max_time (None
    when budget is left). Like ``unitok.lightning_runs.check_budget_left``, as a yes or no: the
    recipe exports a stage whose budget is spent instead of refusing to resume it."""
    from lightning.pytorch.callbacks import Timer

    from unitok.lightning_runs import read_checkpoint, training_seconds

    checkpoint = read_checkpoint(path, written_by="unitok train")
    steps = checkpoint.get("global_step", 0)
    max_steps = trainer.get("max_steps", -1)
    if max_steps not in (None, -1) and steps >= max_steps:
        return steps, f"trained all {max_steps} steps of trainer.max_steps"
    if trainer.get("max_time") is None:
        return steps, None
    if training_seconds(checkpoint) >= Timer(duration=trainer["max_time"]).time_remaining():
        return steps, f"trained for all of trainer.max_time {trainer['max_time']}"
    return steps, None


def _raised(now: dict[str, int | None], before: dict[str, int | None]) -> bool:
    """Whether budget ``now`` allows more than ``before`` (-1 steps or no time: no limit)."""
    def more(new: int | None, old: int | None, unlimited: int | None) -> bool:
        return old not in (unlimited, None) and (new in (unlimited, None) or new > old)

    return more(now["max_steps"], before["max_steps"], -1) or more(now["max_time_s"], before["max_time_s"], None)


def _budget_text(budget: dict[str, int | None]) -> str:
    steps = "no step limit" if budget["max_steps"] in (-1, None) else f"{budget['max_steps']} steps"
    return steps + ("" if budget["max_time_s"] is None else f", {_duration(budget['max_time_s'])}")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
