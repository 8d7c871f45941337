"""`python -m ocelot_algo <command> ...`: one entry point for every tool of the project."""
import importlib
import sys

COMMANDS = {  # command -> (module, function, what it does)
    "predict": ("pipeline", "main", "run the algorithm on a folder of pairs (as process.py)"),
    "validate": ("output", "main_validate", "check a cell_classification.json against Grand-Challenge's rules"),
    "bench": ("bench", "main", "time each stage and measure memory on a generated input"),
    "train": ("train", "main", "train one fold (joint cell + tissue)"),
    "ensemble": ("ensemble", "main", "tune the fold models out-of-fold and write weights/"),
    "evaluate": ("evaluation", "main", "score predictions exactly as the challenge does, with reports"),
    "tissue-maps": ("tissue_eval", "main_maps", "out-of-fold cancer-area maps of the fold members' tissue branch"),
    "overlay": ("overlay", "main", "draw predictions over the patches (PNG)"),
    "make-sample": ("sample", "main", "write a synthetic Grand-Challenge-format input"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        asked_for_help = bool(argv) and argv[0] in ("-h", "--help")
        out = sys.stdout if asked_for_help else sys.stderr
        if argv and not asked_for_help:
            print(f"error: unknown command {argv[0]!r}", file=out)
        print("usage: python -m ocelot_algo <command> [options]   (<command> --help for its options)\n", file=out)
        for name, (_, _, what) in COMMANDS.items():
            print(f"  {name:<12} {what}", file=out)
        return 0 if asked_for_help else 2
    module, function, _ = COMMANDS[argv[0]]
    return getattr(importlib.import_module(f"ocelot_algo.{module}"), function)(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
