"""The import graph against the layering of docs/ARCHITECTURE.md: each package's modules import only the
modules before them in its list, packages only the packages below them, nobody imports benchmarks/, and no
module uses another module's _private names."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Lowest first: a module may import the modules before it in its package's list (docs/ARCHITECTURE.md).
LAYERS = {
    "qgt_keras": ["serialization", "quantizers", "layer_kinds", "regularizers", "layers", "conversion", "distillation",
                  "callbacks", "report", "augmentation", "idx", "datasets", "models", "plots", "recipes"],
    "tflm_export": ["tflite_model", "termination", "files", "layout", "reference", "snap", "keras_convert",
                    "bitpack", "requant", "parameters", "pack", "lut", "tflm_runner", "verify", "c_source",
                    "camera", "person", "toolchain", "emulator", "kernel_abi", "kernel_runner", "memory_plan", "codegen",
                    "model_runner", "sketch_runner", "c_model", "export"],
    "qgt": ["cli", "export", "train", "quickstart"],
}
# A package may import the packages listed for it.
PACKAGES_BELOW = {"qgt_keras": set(), "tflm_export": {"qgt_keras"}, "qgt": {"qgt_keras", "tflm_export"}}


def _modules():
    for package, order in LAYERS.items():
        for path in sorted((ROOT / package).glob("*.py")):
            if path.stem != "__init__":
                yield package, path.stem, path


def _imports(path):
    """(imported module name, names taken from it) of every import statement in ``path``, nested ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [alias.name for alias in node.names]
            found.append((node.module, names))
            found += [(f"{node.module}.{name}", []) for name in names]  # "from qgt_keras import layers"
    return found


def _ours(name):
    parts = name.split(".")
    if parts[0] in LAYERS and len(parts) > 1 and parts[1] in LAYERS[parts[0]]:
        return parts[0], parts[1]
    return None


parametrize_modules = pytest.mark.parametrize("package, module, path", list(_modules()),
                                              ids=lambda value: str(getattr(value, "name", value)))


@parametrize_modules
def test_imports_follow_the_layering(package, module, path):
    assert module in LAYERS[package], f"{package}/{module}.py is not in the layering: add it to docs/ARCHITECTURE.md " \
                                      "and to LAYERS here"
    rank = LAYERS[package].index(module)
    for name, _ in _imports(path):
        top = name.split(".")[0]
        assert top != "benchmarks" and name != "baselines", f"{path.name} imports {name}"
        if top in LAYERS and top != package:
            assert top in PACKAGES_BELOW[package], f"{package}.{module} imports {name}, a package above it"
        target = _ours(name)
        if target and target[0] == package:
            assert LAYERS[package].index(target[1]) < rank, f"{package}.{module} imports {name}, a module above it"


@parametrize_modules
def test_no_module_uses_another_modules_private_names(package, module, path):
    tree = ast.parse(path.read_text())
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                assert not (alias.name.startswith("_") and (_ours(node.module) or node.module in LAYERS)), \
                    f"{path.name} imports the private {node.module}.{alias.name}"
                if _ours(f"{node.module}.{alias.name}"):
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _ours(alias.name):
                    aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            raise AssertionError(f"{path.name}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
