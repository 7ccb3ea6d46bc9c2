"""The ``esper-fast`` command: ``train``, ``evaluate``, ``bench``.

    esper-fast train                       # the "default" preset on CPU, writes runs/<name>/
    esper-fast train --preset smoke        # seconds
    esper-fast train --preset esper --device cuda --total-timesteps 60000
    esper-fast train --resume runs/<name>  # continue (also after Ctrl-C)
    esper-fast evaluate runs/<name>        # the checkpoint vs the heuristic and random baselines
    esper-fast train --print-config        # the resolved configuration, then exit
    esper-fast export-esper runs/<name>    # a checkpoint esper's PPOAgent.load() opens
    esper-fast bench ...                   # esper_fast.bench.main(...)
    torchrun --nproc_per_node 2 -m esper_fast.cli train ...   # data-parallel (gloo on CPU)

Every ``PPOConfig`` field is a flag (``--lstm-hidden-dim 256``, ``--no-anneal-lr``); explicit flags
override the preset. Building the parsers imports no torch (``esper-fast --help`` stays fast):
imports live inside the functions. To add a subcommand, write ``_add_<name>(subparsers)`` that
registers a parser with ``func=...`` and list it in :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shlex
import sys
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "SUBCOMMANDS"]

EXIT_USAGE, EXIT_FAILURE = 2, 1


class CLIError(Exception):
    """A user-facing error: printed as ``esper-fast <command>: error: <message>``."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


# =================================================================================================
# PPOConfig fields as flags
# =================================================================================================
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_none(inner: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null") else inner(text)

    parse.__name__ = f"{inner.__name__} or none"
    return parse


def _parse_head_coefs(text: str) -> dict[str, float]:
    """``op=1.0,blueprint=1.3`` -> dict."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        head, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected HEAD=COEF pairs like 'op=1.0,slot=1.0', got {item!r}")
        out[head.strip()] = float(value)
    return out


TOPOLOGY_NAMES = ("cnn", "transformer")
"""``esper_fast.envs.masks.TOPOLOGIES``' keys, written out so ``--help`` need not import torch (a test keeps
them equal)."""
BACKEND_CHOICES = ("auto", "torch", "cpu", "cuda", "triton")
"""``("auto", *esper_fast.ops.backends.BACKEND_NAMES)``, written out for the same reason (tested)."""


def _choices() -> dict[str, tuple[str, ...]]:
    """Fields whose values come from a fixed set (shown in --help, checked by argparse)."""
    from esper_fast.constants import TRAINER_VALUE_MODES

    return {"value_mode": TRAINER_VALUE_MODES, "topology": TOPOLOGY_NAMES, "backend": BACKEND_CHOICES}


def _show(value: Any) -> str:
    """A config value as a flag would take it (``none``, ``True``, ``op=1.0,slot=1.0``)."""
    if value is None:
        return "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _add_config_flags(parser: argparse.ArgumentParser, shown_preset: str = "default") -> None:
    from esper_fast.ppo.config import PPOConfig, field_docs, make_config

    choices = _choices()
    docs, hints = field_docs(), typing.get_type_hints(PPOConfig)
    shown = make_config(shown_preset)
    group = parser.add_argument_group(
        f"training configuration (PPOConfig fields; override the preset; [brackets]: "
        f"the {shown_preset!r} preset's value)"
    )
    for f in dataclasses.fields(PPOConfig):
        if not f.init:
            continue
        kind = hints[f.name]
        help_text = f"{docs.get(f.name, '')} [{_show(getattr(shown, f.name))}]".replace("%", "%%")
        args = typing.get_args(kind)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), kind) if optional else kind
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if base is bool and not optional:
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kw)
            continue
        if typing.get_origin(base) is dict:
            parse, metavar = _parse_head_coefs, "HEAD=COEF,..."
        elif base is bool:
            parse, metavar = (lambda s: s.lower() in ("1", "true", "yes", "on")), "BOOL"
        else:
            parse, metavar = base, base.__name__.upper()
        if optional:
            parse, metavar = _parse_none(parse), metavar + "|none"
        if f.name in choices:
            kw["choices"], metavar = choices[f.name], None
        group.add_argument(_flag(f.name), type=parse, metavar=metavar, **kw)


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from esper_fast.ppo.config import PPOConfig

    names = {f.name for f in dataclasses.fields(PPOConfig) if f.init}
    return {k: v for k, v in vars(args).items() if k in names}


# =================================================================================================
# train
# =================================================================================================
class Progress:
    """One status line per update: a live bar on a terminal, a plain line every ~5% otherwise."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, stream=sys.stderr) -> None:
        self.total, self.start, self.enabled, self.stream = total, start, enabled, stream
        self.tty = stream.isatty()
        self.t0 = time.perf_counter()
        self.every = max(1, total // 20)
        self.best = None

    def __call__(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        done = row["update"]
        ret = row.get("charts/episode_return")
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done - self.start, 1) * (self.total - done)
        frac = done / self.total
        bar = "#" * int(24 * frac) + "." * (24 - int(24 * frac))
        ret_text = "   n/a" if ret is None else f"{ret:6.2f}"
        line = (
            f"update {done:>5}/{self.total} [{bar}] {100 * frac:5.1f}% | steps {row['global_step']:>9,} | "
            f"return {ret_text} | sps {row['time/sps']:7.0f} | eta {_duration(eta)}"
        )
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done >= self.total else ""))
            self.stream.flush()
        elif done % self.every == 0 or done >= self.total or done == self.start + 1:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def _check_device(device: str) -> None:
    import re

    import torch

    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise CLIError(f"--device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}", EXIT_USAGE)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"device {device!r} requested, but CUDA is not available here (use --device cpu)", EXIT_USAGE)


def _resolve_run(args: argparse.Namespace, resume_ckpt: dict[str, Any] | None, preset: str) -> Path:
    if args.name:
        return Path(args.runs_dir) / args.name
    if resume_ckpt is not None:  # continue in the checkpoint's run directory
        path = Path(resume_ckpt["path"]).resolve()
        return path.parent.parent if path.parent.name == "checkpoints" else path.parent
    base = Path(args.runs_dir) / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    for k in range(1, 1000):  # two runs started in the same second get two directories
        path = base if k == 1 else base.with_name(f"{base.name}-{k}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise CLIError(f"cannot find a free run directory name next to {base}")


@contextlib.contextmanager
def _integration_log_to_stderr() -> Iterator[None]:
    """Show esper_fast.integrations' warnings (e.g. the esper config fields ignored on import) on stderr."""
    import logging

    log = logging.getLogger("esper_fast.integrations")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    old_propagate, log.propagate = log.propagate, False
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.propagate = old_propagate


def cmd_train(args: argparse.Namespace) -> int:
    from esper_fast.ppo import CheckpointError, PPOConfig, Trainer, load_checkpoint, make_config
    from esper_fast.ppo.distributed import init_distributed, shutdown_distributed
    from esper_fast.ppo.evaluate import format_table

    overrides = _config_overrides(args)
    resume_ckpt = warm_start = None
    try:
        if args.resume:
            with _integration_log_to_stderr():
                resume_ckpt = load_checkpoint(args.resume)
            config = PPOConfig.from_dict({**resume_ckpt["config"], **overrides})
            if "esper_import" in resume_ckpt:  # an esper PPOAgent checkpoint: a warm start, not a resume
                warm_start, resume_ckpt = resume_ckpt, None
        else:
            config = make_config(args.preset, **overrides)
    except CheckpointError:
        raise
    except (TypeError, ValueError) as exc:  # PPOConfig validation: a bad flag (or checkpoint config) value
        source = f"checkpoint {resume_ckpt['path']} with these flags: " if resume_ckpt is not None else ""
        raise CLIError(source + str(exc), EXIT_USAGE) from exc
    if args.print_config:
        source = f"checkpoint {resume_ckpt['path']}" if resume_ckpt else f"preset {args.preset!r}"
        print(json.dumps({"source": source, "config": config.to_dict(), "derived": config.derived()}, indent=2))
        return 0
    _check_device(config.device)
    run_dir = _resolve_run(args, resume_ckpt, "esper-warmstart" if warm_start else args.preset)
    if resume_ckpt is None and (run_dir / "checkpoints").exists():
        raise CLIError(
            f"run directory {run_dir} already has checkpoints: pass --resume {run_dir} to continue, "
            "or choose another --name",
            EXIT_USAGE,
        )

    ctx = init_distributed(config.device)
    try:
        log = (lambda msg: print(msg, file=sys.stderr)) if ctx.is_main else (lambda _m: None)
        trainer = Trainer(
            config,
            run_dir if ctx.is_main else None,
            dist=ctx,
            resume=resume_ckpt,
            log=log,
            tensorboard=not args.no_tensorboard,
        )
        if warm_start is not None:
            from esper_fast.integrations.esper_checkpoint import warm_start_from_esper

            warm_start_from_esper(trainer, warm_start)
        if ctx.is_main:
            what = (
                f"resuming {resume_ckpt['path']} at update {trainer.train_steps}"
                if resume_ckpt
                else f"preset {args.preset!r}"
            )
            if warm_start is not None:
                what = f"warm start from esper checkpoint {warm_start['path']} (weights only)"
            log(
                f"esper-fast train: {what} -> {run_dir}  ({trainer.num_updates} updates of "
                f"{config.num_envs} envs x {config.rollout_steps} steps x {ctx.world_size} process(es), "
                f"H={config.lstm_hidden_dim}, value_mode={config.value_mode}, device={ctx.device})"
            )
        progress = Progress(trainer.num_updates, trainer.train_steps, enabled=not args.no_progress and ctx.is_main)
        summary = trainer.train(on_update=progress)
        progress.close()
    finally:
        shutdown_distributed()
    if not ctx.is_main:
        return 0
    last = summary.get("last_metrics") or {}
    if last:
        ret = last.get("charts/episode_return")
        print(
            f"updates {summary['updates']}  env steps {summary['global_step']:,}  last return "
            f"{'n/a' if ret is None else f'{ret:.2f}'}  value/action op agreement {last['charts/op_agreement']:.3f}"
        )
    if summary.get("evaluation"):
        print(f"\nevaluation: {config.eval_episodes} episodes, seed {config.eval_seed}")
        print(format_table(summary["evaluation"]))
    print(f"\nrun directory: {run_dir}")
    if summary.get("checkpoint"):
        print(f"checkpoint:    {summary['checkpoint']}")
    if summary.get("plot"):
        print(f"learning curve: {summary['plot']}")
    if summary.get("interrupted"):
        print(
            f"\ninterrupted after update {summary['updates']}; to continue:\n"
            f"  {resume_command(run_dir, ctx.world_size)}"
        )
        return 130
    return 0


def resume_command(run_dir: Path, world_size: int = 1) -> str:
    """The command that continues the run in ``run_dir`` (its checkpoint holds the config)."""
    prefix = "esper-fast" if world_size == 1 else f"torchrun --nproc_per_node {world_size} -m esper_fast.cli"
    return f"{prefix} train --resume {shlex.quote(str(run_dir))}"


def _add_train(sub: argparse._SubParsersAction) -> None:
    from esper_fast.ppo.config import PRESETS

    p = sub.add_parser(
        "train",
        help="train PPO on the seed-lifecycle env",
        description="Train recurrent PPO (esper's algorithm) on SeedLifecycleEnv. Writes "
        "runs/<name>/: config.json, metrics.csv, metrics.jsonl, TensorBoard events "
        "(if installed), checkpoints/, learning_curve.png, summary.json. Ctrl-C "
        "finishes the current update, saves a checkpoint and prints the --resume "
        "command. The values in [brackets] below are the 'default' preset's "
        "(--print-config shows a whole resolved configuration).",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="starting configuration: smoke (seconds), default (minutes on CPU), esper (esper's sizes)",
    )
    p.add_argument("--name", help="run name (default: <preset>-<date>-<time>)")
    p.add_argument("--runs-dir", default="runs", help="parent directory of run directories (default: runs)")
    p.add_argument(
        "--resume",
        metavar="PATH",
        help="continue from a checkpoint file or a run directory; an esper "
        "PPOAgent.save() file is a warm start (its weights, its mapped config, fresh optimizer and counters)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration (preset or checkpoint + flags) as JSON and exit",
    )
    _add_config_flags(p)
    p.set_defaults(func=cmd_train)


# =================================================================================================
# evaluate
# =================================================================================================
def cmd_evaluate(args: argparse.Namespace) -> int:
    from esper_fast.ppo import load_policy
    from esper_fast.ppo.evaluate import compare_with_baselines, format_table

    if args.episodes < 1:
        raise CLIError(f"--episodes: expected >= 1, got {args.episodes}", EXIT_USAGE)
    _check_device(args.device)
    with _integration_log_to_stderr():
        policy, obs_norm, config, ckpt = load_policy(args.checkpoint, device=args.device)
    modes = {"both": ("sampled", "greedy"), "sampled": ("sampled",), "greedy": ("greedy",)}[args.mode]
    results = compare_with_baselines(policy, obs_norm, config, args.episodes, args.seed, args.device, modes)
    if args.json:
        print(
            json.dumps({"checkpoint": ckpt["path"], "train_steps": ckpt["train_steps"], "results": results}, indent=2)
        )
    else:
        print(
            f"checkpoint {ckpt['path']} (update {ckpt['train_steps']}, value_mode {config.value_mode}); "
            f"{args.episodes} episodes, seed {args.seed}"
        )
        print(format_table(results))
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a checkpoint against the heuristic and random baselines",
        description="Play the same episodes with the checkpoint's policy, the heuristic and the "
        "random baseline; print a table.",
    )
    p.add_argument("checkpoint", help="checkpoint file, or a run directory (uses checkpoints/latest.pt)")
    p.add_argument(
        "--episodes",
        type=int,
        default=1024,
        help="episodes per policy (default: 1024, where the README's runs have standard errors of 0.25-0.45)",
    )
    p.add_argument("--seed", type=int, default=12345, help="env seed: the same episodes for every policy")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument(
        "--mode",
        choices=("both", "sampled", "greedy"),
        default="both",
        help="PPO actions sampled, greedy (argmax), or both rows (default)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_evaluate)


# =================================================================================================
# export-esper
# =================================================================================================
def cmd_export_esper(args: argparse.Namespace) -> int:
    from esper_fast.integrations.esper_checkpoint import export_esper_checkpoint

    lines: list[str] = []
    path = export_esper_checkpoint(args.run, args.output, log=lines.append)
    for line in lines:
        print(line, file=sys.stderr)
    print(
        f"esper checkpoint: {path}  (open with esper's PPOAgent.load(path); see README 'Using esper_fast inside esper')"
    )
    return 0


def _add_export_esper(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-esper",
        help="write a checkpoint that esper's PPOAgent.load() opens",
        description="Convert an esper-fast checkpoint to esper's PPOAgent.save() layout (esper's "
        "config keys only; what esper cannot represent is printed and kept in "
        "metadata['not_representable']). esper's bundle always builds feature_dim 512 "
        "and one LSTM layer, so other runs are refused. esper 0872525b's own load() "
        "cannot open any checkpoint (its own included: it rebuilds the network with "
        "the wrong state_dim); load under esper_fast.patch_esper(), which fixes that.",
    )
    p.add_argument("run", help="checkpoint file, or a run directory (uses checkpoints/latest.pt)")
    p.add_argument("-o", "--output", help="output file (default: esper.pt beside the checkpoint)")
    p.set_defaults(func=cmd_export_esper)


# =================================================================================================
# bench
# =================================================================================================
def cmd_bench(args: argparse.Namespace) -> int:
    from esper_fast import bench  # part of the package (esper_fast/bench/)

    result = bench.main(list(args.bench_args))
    return int(result or 0)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmarks (esper_fast.bench)",
        add_help=False,
        description="Runs esper_fast.bench.main with the remaining arguments "
        "(esper-fast bench --help shows its options).",
    )
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for esper_fast.bench")
    p.set_defaults(func=cmd_bench)  # main() hands everything after "bench" over unparsed, -h included


STUDIES = ("advantage-bias",)


def cmd_study(args: argparse.Namespace) -> int:
    argv = list(args.study_args)
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: esper-fast study NAME [options]\n\nstudies:\n  advantage-bias  which value baseline PPO "
            "needs, measured exactly on ExactMDP (docs/value-baselines.md)\n\n"
            "esper-fast study NAME -h shows the study's options."
        )
        return 0 if argv else EXIT_USAGE
    if argv[0] not in STUDIES:
        raise CLIError(f"unknown study {argv[0]!r}; expected one of {list(STUDIES)}", EXIT_USAGE)
    from esper_fast.studies import advantage_bias

    return int(advantage_bias.main(argv[1:]) or 0)


def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="run a study (esper_fast.studies): advantage-bias",
        add_help=False,
        description="esper-fast study advantage-bias [--out DIR ...]: the value-baseline study "
        "(docs/value-baselines.md); --help after the name shows its options.",
    )
    p.add_argument("study_args", nargs=argparse.REMAINDER, help="the study's name (advantage-bias), then its arguments")
    p.set_defaults(func=cmd_study)  # main() hands everything after "study" over unparsed, -h included


# =================================================================================================
# entry point
# =================================================================================================
SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_train,
    _add_evaluate,
    _add_bench,
    _add_study,
    _add_export_esper,
)
"""Each registers one subcommand; add a ``study`` command by appending its ``_add_study``."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esper-fast",
        description="esper_fast: train, evaluate and benchmark esper's factored recurrent PPO policy.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in SUBCOMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # `esper-fast` alone: help, not an argparse error
        parser.print_help()
        return EXIT_USAGE
    if argv[0] in ("bench", "study"):  # pass-through commands: their own parsers see every argument, -h too
        args = argparse.Namespace(
            command=argv[0],
            bench_args=argv[1:],
            study_args=argv[1:],
            func=cmd_bench if argv[0] == "bench" else cmd_study,
        )
    else:
        args = parser.parse_args(argv)
    from esper_fast.ppo.checkpoint import CheckpointError
    from esper_fast.ppo.runlock import RunDirInUseError

    try:
        return args.func(args)
    except CLIError as exc:
        print(f"esper-fast {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except (CheckpointError, RunDirInUseError) as exc:
        print(f"esper-fast {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # a runs dir that is a file, a read-only dir, a full disk...
        where = f": {exc.filename}" if exc.filename else ""
        print(f"esper-fast {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"esper-fast {args.command}: aborted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
