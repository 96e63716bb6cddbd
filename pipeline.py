"""The `pipeline` command line: a thin click face over `extract` (stage one) and `classify` (stage two).

Every command builds one frozen config dataclass; its options are generated from the dataclass fields (same names,
defaults and help), so `--help` and the code cannot drift. Logging, device and seed are resolved here, once.

    pipeline extract --games valid.jsonl.gz --regions regions.h5 --model oracle/ --out cache/valid.h5
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import re
import sys
import types
import typing
from pathlib import Path

import click

from classify.evaluate import EvaluateConfig
from classify.predict import PredictConfig
from classify.train import TrainConfig
from extract.finetune import FinetuneConfig
from extract.job import ExtractConfig, option
from extract.regions import ImportTsvConfig, import_tsv

log = logging.getLogger("pipeline")


# ---------------------------------------------------------------- config dataclass → click options


def config_options(cls: type) -> typing.Callable:
    """Decorator adding one click option per field of the dataclass `cls` (name, default, help, type)."""

    def decorate(function: typing.Callable) -> typing.Callable:
        hints = typing.get_type_hints(cls)
        for field in reversed(dataclasses.fields(cls)):
            function = _option(field, hints[field.name])(function)
        function.config_class = cls  # read by the test that checks options against fields
        return function

    return decorate


def _option(field: dataclasses.Field, hint: object) -> typing.Callable:
    name = "--" + field.name.replace("_", "-")
    required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    default = (
        None if required else (field.default if field.default is not dataclasses.MISSING else field.default_factory())
    )
    kwargs: dict = {"help": field.metadata.get("help", ""), "show_default": not required and default not in (None, ())}
    if required:
        kwargs["required"] = True
    else:
        kwargs["default"] = default
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if field.metadata.get("argument"):  # positional, e.g. `import-tsv A.tsv B.tsv`
        return click.argument(
            field.name,
            nargs=-1 if origin is tuple else 1,
            required=required,
            type=_click_type(args[0] if origin is tuple else hint),
        )
    if origin in (typing.Union, types.UnionType):  # `X | None`
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:  # off by default: a plain flag; on by default: --x/--no-x
        if default:
            return click.option(f"{name}/--no-{name[2:]}", field.name, **kwargs)
        kwargs["show_default"] = False
        return click.option(name, field.name, is_flag=True, **kwargs)
    if origin is tuple:  # tuple[X, ...]: the option may be repeated
        kwargs.update(multiple=True, type=_click_type(args[0]))
        kwargs["default"] = default or ()
        kwargs["required"] = required
        return click.option(name, field.name, **kwargs)
    return click.option(name, field.name, type=_click_type(hint), **kwargs)


def _click_type(hint: object) -> click.ParamType | type:
    if typing.get_origin(hint) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(hint)])
    if hint is Path:
        return click.Path(path_type=Path)
    return hint  # int, float, str


def build(cls: type, values: dict) -> object:
    """Make the config; a ValueError from its validation becomes a usage error (one line, exit 2)."""
    try:
        return cls(**{k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(cls)}})
    except ValueError as error:
        raise click.UsageError(str(error)) from None


def resolve_device(name: str) -> str:
    """'auto' → 'cuda' when a GPU is visible, else 'cpu'; an explicit 'cuda' without one is an error."""
    import torch

    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise click.UsageError(f"--device {name}: use auto, cpu, cuda or cuda:N")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise click.UsageError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return name


# ---------------------------------------------------------------- the command group


RESUME_HINTS = {
    **dict.fromkeys(
        ("extract", "finetune", "train"),
        " Work finished so far is kept: rerun the same command with --resume to continue from it.",
    ),
    "demo": " Finished steps are kept: rerun the same command to continue.",
    "regions": " Imported images are kept in OUT.partial: rerun the same command to continue.",
}


class _Group(click.Group):
    """Bad input from the libraries (ValueError, OSError) ends as one line and a non-zero exit, no traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            hint = RESUME_HINTS.get(ctx.invoked_subcommand or "", "")
            click.echo(f"\nInterrupted.{hint}", err=True)
            ctx.exit(130)
        except (ValueError, OSError, KeyError) as error:
            if isinstance(error, click.ClickException):
                raise
            message = str(error) if not isinstance(error, KeyError) else f"missing key {error}"
            raise click.ClickException(message) from None


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """GuessWhat?! dialogue oracle: LXMERT vectors per question, then an LSTM over the dialogue."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


# ---------------------------------------------------------------- stage one


def _distributed(device: str) -> tuple[int, int, str, typing.Callable[[], None]]:
    """(rank, world size, device, barrier) — under torchrun one process group per job, else a single process."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device, lambda: None
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), world, device, dist.barrier


@main.command()
@config_options(FinetuneConfig)
def finetune(**values: object) -> None:
    """Fine-tune LXMERT as the single-turn oracle that `pipeline extract --model DIR` then runs."""
    from extract.finetune import run_finetune

    config = build(FinetuneConfig, values)
    rank, world, device, barrier = _distributed(resolve_device(config.device))
    accuracy = run_finetune(config, device, rank=rank, world=world, barrier=barrier)
    if rank == 0:
        what = f"{config.model} on {config.valid}" if config.eval_only else f"{config.out}: best validation"
        click.echo(f"{what} accuracy {accuracy:.4f}")


@main.group()
def regions() -> None:
    """Region features: import the detector features you already have into one region store."""


@regions.command("import-tsv")
@config_options(ImportTsvConfig)
def regions_import_tsv(**values: object) -> None:
    """Convert LXMERT's *_obj36.tsv files (train2014, val2014, ...) into one region store, streaming."""
    config = build(ImportTsvConfig, values)
    added, present = import_tsv(config)
    click.echo(f"{config.out}: {added} images added, {present} already present")


@main.command()
@config_options(ExtractConfig)
def extract(**values: object) -> None:
    """Encode every question of a games file with LXMERT into an oracle cache (stage one)."""
    from extract.job import run_extract

    config = build(ExtractConfig, values)
    rank, world, device, barrier = _distributed(resolve_device(config.device))
    summary = run_extract(config, device, rank=rank, world=world, barrier=barrier)
    if summary is not None:
        click.echo(
            f"{config.out}: {summary.games} games, {summary.questions} questions, "
            f"{summary.questions / summary.seconds:.1f} q/s, {summary.bytes / 2**20:.1f} MiB"
            + (f", {summary.skipped_missing} games skipped (image missing)" if summary.skipped_missing else "")
        )


# ---------------------------------------------------------------- stage two


@main.command()
@config_options(TrainConfig)
def train(**values: object) -> None:
    """Train a stage-two oracle (dialogue LSTM or single-turn baseline) on oracle caches."""
    from classify.train import train as train_oracle

    config = build(TrainConfig, values)
    result = train_oracle(config, resolve_device(config.device))
    click.echo(
        f"{result.out}: best epoch {result.best_epoch} of {result.epochs}, "
        f"valid accuracy with own answers {100 * result.best_accuracy:.1f} %"
    )


@main.command()
@config_options(EvaluateConfig)
def evaluate(**values: object) -> None:
    """Score runs and/or a predictions file against gold answers; print every table, write report.json."""
    from classify.evaluate import evaluate as evaluate_oracle
    from classify.metrics import Questions

    config = build(EvaluateConfig, values)
    questions = None
    if config.games is not None:  # gold answers from a games file: the one place both libraries meet
        from extract.games import parse_statuses, read_games

        games = read_games(config.games, parse_statuses(config.status))
        turns = [(game.game_id, turn) for game in games for turn in game.turns]
        questions = Questions(
            qid=[turn.qid for _, turn in turns],
            game_id=[game_id for game_id, _ in turns],
            answer=[turn.answer for _, turn in turns],
            question=[turn.question for _, turn in turns],
        )
    device = resolve_device(config.device) if config.run else "cpu"
    _, text = evaluate_oracle(config, device, questions)
    click.echo(text)
    click.echo(f"\nreport: {config.report_path()}")


# ---------------------------------------------------------------- both stages: new games


def _read_new_games(path: Path) -> list:
    """Games to answer: a file (JSON lines or one JSON game) or `-` for JSON lines on stdin; any status."""
    from extract.games import read_games, read_games_lines

    if str(path) == "-":
        return read_games_lines(sys.stdin, "<stdin>")
    return read_games(path, statuses=None)


def _check_pair(oracle: str, encoder: object, checkpoint: dict, run: Path) -> None:
    """The run must have been trained on caches made by this oracle: same feature size and LXMERT config."""
    if checkpoint["feature_size"] != encoder.hidden_size:
        raise ValueError(
            f"--oracle {oracle} makes {encoder.hidden_size}-d vectors but --run {run} was trained on "
            f"{checkpoint['feature_size']}-d ones; use the oracle that extracted the run's caches"
        )
    trained_on = checkpoint.get("cache_attrs", {})
    ours = encoder.describe(oracle)
    for key in ("model_config_hash", "model_weights_hash", "oracle_settings"):
        if trained_on.get(key) not in (None, ours[key]):
            raise ValueError(
                f"--oracle {oracle}: its {key} differs from that of the caches --run {run} was trained on "
                f"(made by {trained_on.get('model')}); use the oracle that made them"
            )


@main.command()
@config_options(PredictConfig)
def predict(**values: object) -> None:
    """Answer every question of new games: LXMERT in memory, then the dialogue model on its own answers."""
    from classify.predict import accuracy

    config = build(PredictConfig, values)
    records = run_predict(config)
    if records is not None:
        score = accuracy(records)
        games = len({r["game_id"] for r in records})
        summary = f"{games} games, {len(records)} questions answered"
        click.echo(
            summary + (f"; accuracy {score:.4f} against the file's answers" if score is not None else ""), err=True
        )


def run_predict(config: PredictConfig) -> list[dict] | None:
    """Encode the games with the oracle, answer them with the run, write the predictions; None in live mode."""
    from classify.data import make_split
    from classify.predict import predict_split, prediction_records, write_predictions
    from classify.run import load_model
    from extract.cache import columns, write_cache
    from extract.encoder import Encoder, TargetFeatures
    from extract.job import check_inputs, check_oracle_inputs, encode_games
    from extract.regions import RegionStore

    if config.out is not None and config.out.is_dir():
        raise IsADirectoryError(f"--out {config.out}: is a directory; give a file name such as predictions.jsonl")
    device = resolve_device(config.device)
    model, checkpoint = load_model(config.run, device)
    encoder = Encoder.load(config.oracle, device=device, precision=config.precision)
    _check_pair(config.oracle, encoder, checkpoint, config.run)
    store = RegionStore(config.regions)
    targets = TargetFeatures(config.target_features) if config.target_features else None
    check_oracle_inputs(config.oracle, encoder.visual_feat_dim, encoder.settings, store, targets)
    if config.interactive:
        return _interactive(config, model, encoder, store, targets, device)
    games, _ = check_inputs(_read_new_games(config.games), store, targets, skip_missing=False)
    if not games:
        raise ValueError(f"{config.games}: no games with questions to answer")
    pooled, vision = encode_games(encoder, games, store, targets, config.batch_size)
    if config.cache:
        attrs = {**encoder.describe(config.oracle), "source_games": str(config.games)}
        write_cache(config.cache, games, pooled, vision, attrs)
    cols = columns(games)
    question = cols.pop("question")
    cols.pop("image")
    split = make_split(str(config.games), pooled=pooled, target_vision=vision, **cols)
    records = prediction_records(split, predict_split(model, split, config.batch_size, device), question)
    write_predictions(records, config.out)
    return records


def _interactive(
    config: PredictConfig, model: object, encoder: object, store: object, targets: object, device: str
) -> None:
    """Answer typed questions about one game; the game's own questions, if any, are replayed first."""
    from classify.predict import LiveDialogue
    from extract.encoder import Example, inject_target
    from extract.games import LABELS, read_games

    games = read_games(config.game, statuses=None, keep_empty=True)
    if len(games) != 1:
        raise ValueError(f"--game {config.game}: expected one game, found {len(games)}")
    game = games[0]
    visual = inject_target(game, store[game.image], targets)
    live = LiveDialogue(model, game.game_id, game.target.category_id, game.target_box_normalised(), device)
    stdin = sys.stdin
    prompt = stdin.isatty()

    def answer(question: str) -> None:
        pooled, vision = encoder.encode([Example(question, visual)])
        probs = live.ask(pooled[0], vision[0])
        shown = "  ".join(f"{label} {p:.2f}" for label, p in zip(LABELS, probs, strict=True))
        click.echo(f"{LABELS[int(probs.argmax())]}\t({shown})")

    click.echo(f"game {game.game_id}: target is a {game.target.category} in {game.image}; empty line or 'quit' ends")
    for turn in game.turns:
        click.echo(f"> {turn.question}")
        answer(turn.question)
    while True:
        if prompt:
            click.echo("> ", nl=False)
        line = stdin.readline()
        if not line or line.strip().lower() in ("", "quit", "exit"):
            break
        if not prompt:  # piped questions: show which question each answer belongs to
            click.echo(f"> {line.strip()}")
        answer(line.strip())


# ---------------------------------------------------------------- the built-in demo


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Options of `pipeline demo`."""

    out: Path = option(Path("demo"), "Folder for everything the demo makes.")
    seed: int = option(0, "Seed of the world and of every training run.")
    train_games: int = option(6000, "Games in the synthetic train split.")
    test_games: int = option(500, "Games in each of valid and test.")
    finetune_epochs: int = option(1, "Epochs of LXMERT fine-tuning.")
    train_epochs: int = option(60, "Most epochs of stage-two training.")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    overwrite: bool = option(False, "Start again instead of resuming.")

    def __post_init__(self) -> None:
        for name in ("train_games", "test_games", "finetune_epochs", "train_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be ≥ 1")


DEMO_OUTPUTS = (
    "world",
    "lxmert",
    "oracle",
    "cache",
    "runs",
    "progress.json",
    "one_game.jsonl",
    "predictions.jsonl",
    "summary.json",
)


class _Steps:
    """The demo's finished steps, kept in OUT/progress.json: an interrupted demo resumes after the last one."""

    def __init__(self, out: Path) -> None:
        self.path = out / "progress.json"
        self.done = set(json.loads(self.path.read_text())) if self.path.is_file() else set()

    def run(self, title: str, work: typing.Callable[[], object]) -> None:
        if title in self.done:
            click.echo(f"\n== {title} (done before, skipped)", err=True)
            return
        click.echo(f"\n== {title}", err=True)
        work()
        self.done.add(title)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(sorted(self.done)))


@main.command()
@config_options(DemoConfig)
def demo(**values: object) -> None:
    """The whole pipeline on a built-in synthetic GuessWhat world: no downloads, about 1.5 minutes on 2 CPU cores."""
    import shutil

    config = build(DemoConfig, values)
    if config.out.exists() and not config.out.is_dir():
        raise click.UsageError(f"--out {config.out}: is a file; give a folder for the demo's outputs")
    if config.overwrite:  # only what the demo writes: --out . must not delete anything else
        for name in DEMO_OUTPUTS:
            path = config.out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    summary = run_demo(config, resolve_device(config.device))
    click.echo(summary)


def run_demo(config: DemoConfig, device: str) -> str:
    """World → tiny LXMERT → fine-tune → extract → train both stage-two models → evaluate → predict one game."""
    from classify.evaluate import EvaluateConfig, evaluate
    from classify.train import TrainConfig
    from classify.train import train as train_oracle
    from extract.encoder import question_words, save_random_lxmert
    from extract.finetune import run_finetune
    from extract.games import read_games
    from extract.job import run_extract
    from extract.world import WorldConfig, generate_world

    out, world, steps = config.out, config.out / "world", _Steps(config.out)
    splits = {name: world / f"{name}.jsonl.gz" for name in ("train", "valid", "test")}
    regions, lxmert, oracle = world / "regions.h5", out / "lxmert", out / "oracle"
    caches = {name: out / "cache" / f"{name}.h5" for name in splits}
    runs = {kind: out / "runs" / kind for kind in ("turn", "dialogue")}
    sizes = {"train_games": config.train_games, "valid_games": config.test_games, "test_games": config.test_games}
    world_config = WorldConfig(seed=config.seed, **sizes)
    steps.run("1/8 synthetic world", lambda: generate_world(world, world_config))

    def tiny_lxmert() -> None:
        questions = [t.question for path in splits.values() for g in read_games(path) for t in g.turns]
        words = question_words(questions)
        save_random_lxmert(lxmert, words, world_config.feature_size, hidden_size=64, seed=config.seed)

    steps.run("2/8 tiny random LXMERT (hidden 64, 1/1/1 layers)", tiny_lxmert)
    interrupted = (oracle / "checkpoint.pt").is_file()  # an interrupted fine-tuning continues where it stopped
    finetune = FinetuneConfig(
        train=splits["train"],
        valid=splits["valid"],
        regions=regions,
        out=oracle,
        model=str(lxmert),
        epochs=config.finetune_epochs,
        lr=5e-4,
        batch_size=64,
        seed=config.seed,
        device=device,
        resume=interrupted,
        overwrite=not interrupted,
    )
    steps.run("3/8 fine-tune it as the single-turn oracle", lambda: run_finetune(finetune, device))

    def extract_all() -> None:
        for name, path in splits.items():
            # resume: chunks an interrupted run saved are kept; overwrite: a stale finished cache is replaced
            settings = {"regions": regions, "model": str(oracle), "overwrite": True, "resume": True, "device": device}
            run_extract(ExtractConfig(games=path, out=caches[name], **settings), device)

    steps.run("4/8 extract the oracle caches", extract_all)
    for step, (kind, run) in enumerate(runs.items(), start=5):
        train = TrainConfig(
            train=caches["train"],
            valid=caches["valid"],
            out=run,
            model=kind,
            base=runs["turn"] if kind == "dialogue" else None,  # the LSTM learns what the dialogue adds
            lr=3e-3,
            patience=10,
            epochs=config.train_epochs,
            seed=config.seed,
            overwrite=True,
        )
        steps.run(f"{step}/8 train the {kind} model", lambda train=train: train_oracle(train, device))
    click.echo("\n== 7/8 evaluate both on test", err=True)
    _, tables = evaluate(EvaluateConfig(run=tuple(runs.values()), cache=caches["test"]), device)
    click.echo(tables)
    click.echo("\n== 8/8 answer one test game with `pipeline predict`", err=True)
    first_game = out / "one_game.jsonl"
    first_game.write_text(gzip.open(splits["test"], "rt").readline())
    records = run_predict(
        PredictConfig(
            oracle=str(oracle),
            run=runs["dialogue"],
            regions=regions,
            games=first_game,
            out=out / "predictions.jsonl",
            device=device,
        )
    )
    for record in records:
        click.echo(json.dumps(record))
    return _demo_summary(caches["test"], runs, out, device)


def _demo_summary(cache: Path, runs: dict[str, Path], out: Path, device: str) -> str:
    """Accuracy by the world's own question types (with the history-dependent one), both models side by side."""
    import numpy as np

    from classify.data import read_split
    from classify.evaluate import answer_split
    from classify.run import load_model
    from extract.world import QUESTION_TYPES, question_type

    split = read_split(cache, questions=True)
    types = np.array([question_type(q) for q in split.question])
    groups = {
        "all": np.ones(len(types), bool),
        **{t: types == t for t in QUESTION_TYPES},
        "all but history": types != "history",
    }
    scores = {}
    for kind, run in runs.items():
        model, _ = load_model(run, device)
        right = answer_split(model, split, 256, device, "own").argmax(axis=1) == split.answer
        scores[kind] = {name: float(right[mask].mean()) for name, mask in groups.items()}
    (out / "summary.json").write_text(
        json.dumps({"questions": {k: int(m.sum()) for k, m in groups.items()}, "accuracy": scores}, indent=2) + "\n"
    )
    lines = [
        f"\nDemo summary: test accuracy (%) by question type, own answers fed back ({out / 'summary.json'})",
        f"{'type':<16}{'n':>6}{'single-turn':>13}{'dialogue':>10}{'gain':>8}",
    ]
    for name, mask in groups.items():
        turn, dialogue = 100 * scores["turn"][name], 100 * scores["dialogue"][name]
        lines.append(f"{name:<16}{int(mask.sum()):>6}{turn:>13.1f}{dialogue:>10.1f}{dialogue - turn:>+8.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
