"""What every command's `--help` shares: each option's default, shown the same way by all of them."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help where X is a real default: not for None, flags or --help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return f"{action.help} (default: %(default)s)"


class DocstringHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The same, with the description (a module docstring, wrapped by hand) printed as written."""
