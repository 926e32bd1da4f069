"""What the three commands share (qgt/cli.py): one vocabulary, --help that lists each tool's own flags
without loading TensorFlow, and the NAME=BITS parser."""

import argparse
import subprocess
import sys

import pytest

from qgt import cli, export, quickstart, train

COMMANDS = {"qgt-train": train, "qgt-export": export, "qgt-quickstart": quickstart}


@pytest.mark.parametrize("name", COMMANDS)
def test_help_lists_the_tools_own_flags_without_loading_tensorflow(name):
    module = COMMANDS[name].__name__
    done = subprocess.run([sys.executable, "-c", f"import sys\nimport {module} as command\ntry:\n"
                           "    command.main(['--help'])\nexcept SystemExit:\n    pass\n"
                           "print('tensorflow loaded:', 'tensorflow' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {name}") and "tensorflow loaded: False" in done.stdout
    assert "Try --helpfull" not in done.stdout
    parser = COMMANDS[name].build_parser()
    flags = [option for action in parser._actions for option in action.option_strings if option.startswith("--")]
    for flag in flags:
        assert flag in done.stdout, flag
    for shared in ("--bits", "--layer_bits", "--out_dir"):
        assert shared in flags


def test_one_vocabulary():
    assert "--model" in [o for a in export.build_parser()._actions for o in a.option_strings]
    for command in (train, quickstart):
        options = [o for a in command.build_parser()._actions for o in a.option_strings]
        assert "--architecture" in options and "--model" not in options


def test_the_help_names_the_choices_the_library_has():
    from qgt_keras import datasets, models
    help_text = train.build_parser().format_help().replace("\n", " ")
    help_text = " ".join(help_text.split())
    assert ", ".join(datasets.NAMES) in help_text and ", ".join(models.MODELS) in help_text


@pytest.mark.parametrize("text, expected", [("conv1=8,dense=8", {"conv1": 8, "dense": 8}), ("0=8, 3=2", {0: 8, 3: 2}),
                                            ("", {}), ("pw1=-1", {"pw1": -1})])
def test_layer_bits_parse(text, expected):
    assert cli.parse_layer_bits(text) == expected


@pytest.mark.parametrize("text", ["conv1:2", "=2", "conv1=", "conv1=2.5"])
def test_layer_bits_that_are_not_name_equals_bits(text):
    with pytest.raises(argparse.ArgumentTypeError, match="is not NAME=BITS"):
        cli.parse_layer_bits(text)
