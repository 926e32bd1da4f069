"""Accuracy against weight bytes for QGT and the baselines (qgt_keras.recipes and benchmarks/baselines.py),
on person96 and Fashion-MNIST.

    python benchmarks/accuracy_vs_size.py            # the committed configuration (see --help)
    python benchmarks/accuracy_vs_size.py --quick --out=/tmp/quick   # every method once, in minutes

Writes <out>.json ({"rows": [...]}, one row per data set, method and bits, mean and std over seeds),
<out>.md (the table and the configuration) and <out>.png (accuracy against packed kernel bytes).
Per seed, a data set's float pre-training (if any) runs once and every method fine-tunes from it for the
same number of epochs; PTQ quantizes the float model trained for all of them.
"""

import json
import math
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import baselines  # noqa: E402
import provenance  # noqa: E402
from qgt_keras import layer_kinds  # noqa: E402
from qgt_keras import recipes  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
MLPERF_WEIGHTS = REPO_ROOT.parent / "shared" / "reference_models" / "mlperf_tiny_vww_96.h5"

FLAGS = flags.FLAGS
flags.DEFINE_string("out", str(REPO_ROOT / "benchmarks" / "results" / "accuracy_vs_size"),
                    "Output path without extension.")
flags.DEFINE_list("datasets", ["person96", "fashion_mnist"], "Data sets to run.")
flags.DEFINE_integer("person_seeds", 1, "person96: seeds per method (0, 1, ...).", lower_bound=1)
flags.DEFINE_integer("fmnist_seeds", 1, "Fashion-MNIST: seeds per method (0, 1, ...).", lower_bound=1)
flags.DEFINE_string("init_from", str(MLPERF_WEIGHTS),
                    "person96: float start (the MLPerf Tiny VWW weights, trained on real VWW); '' for scratch.")
flags.DEFINE_integer("person_float_epochs", 0, "person96: shared float pre-training epochs.", lower_bound=0)
flags.DEFINE_integer("person_epochs", 3, "person96: epochs of every method.", lower_bound=1)
flags.DEFINE_integer("fmnist_limit", 6000, "Fashion-MNIST: training images (random subset; test is all 10k).",
                     lower_bound=64)
flags.DEFINE_integer("fmnist_float_epochs", 4, "Fashion-MNIST: shared float pre-training epochs.", lower_bound=0)
flags.DEFINE_integer("fmnist_epochs", 2, "Fashion-MNIST: epochs of every method.", lower_bound=1)
flags.DEFINE_float("mixed_bits", 2.5, "qgt_mixed budget in mean bits per kernel weight.")
flags.DEFINE_integer("verbose", 2, "Keras fit verbosity.")
flags.DEFINE_bool("quick", False, "A smoke run: small_cnn on 64 images at 16x16 (person96) and 64 Fashion-MNIST "
                  "images, one float and one method epoch, no MLPerf start; numbers mean nothing.")

METHOD_STYLES = {
    "float": ("black", "*"), "ptq_max": ("tab:gray", "v"), "ptq_mse": ("tab:brown", "^"),
    "qat_ste": ("tab:blue", "s"), "tfmot_qat": ("tab:orange", "D"), "tfmot_cluster": ("tab:purple", "P"),
    "qgt": ("tab:red", "o"), "qgt_mixed": ("tab:green", "X"),
}
_QUICK = dict(model_name="small_cnn", limit=64, test_limit=64, pretrain_epochs=1, finetune_epochs=1)

# (method, bits, options) in table order; ptq rows name their scale search.
METHOD_GRID = (
    ("float", layer_kinds.FLOAT_BITS, {}),
    ("ptq", 8, {"scale": "mse"}), ("ptq", 4, {"scale": "max"}), ("ptq", 4, {"scale": "mse"}),
    ("ptq", 2, {"scale": "max"}), ("ptq", 2, {"scale": "mse"}),
    ("qat_ste", 4, {}), ("qat_ste", 2, {}),
    ("tfmot_qat", 8, {}), ("tfmot_qat", 4, {}), ("tfmot_qat", 2, {}),
    ("tfmot_cluster", 4, {}), ("tfmot_cluster", 2, {}),
    ("qgt", 8, {}), ("qgt", 4, {}), ("qgt", 2, {}),
    ("qgt_mixed", None, {}),
)


def dataset_config(name):
    """build_setup arguments and a description of the configuration of data set ``name``."""
    if name == "person96":
        options = dict(dataset="person_folder", model_name="mobilenet_v1", alpha=0.25, image_size=96,
                       batch_size=32, init_from=FLAGS.init_from or None, pretrain_epochs=FLAGS.person_float_epochs,
                       finetune_epochs=FLAGS.person_epochs, learning_rate=3e-3, finetune_learning_rate=1e-3)
        start = "MLPerf Tiny VWW float weights" if FLAGS.init_from else "scratch"
        text = (f"MobileNetV1-0.25 96x96 RGB, start: {start}, {FLAGS.person_float_epochs} shared float + "
                f"{FLAGS.person_epochs} method epochs, batch 32, Adam 1e-3 cosine")
        seeds = FLAGS.person_seeds
    elif name == "fashion_mnist":
        options = dict(dataset="fashion_mnist", model_name="mobilenet_28", alpha=1.0, image_size=28,
                       batch_size=64, limit=FLAGS.fmnist_limit, augment=False,
                       pretrain_epochs=FLAGS.fmnist_float_epochs, finetune_epochs=FLAGS.fmnist_epochs,
                       learning_rate=3e-3, finetune_learning_rate=1e-3)
        text = (f"MobileNet-28 (alpha 1), {FLAGS.fmnist_limit} training images, full 10k test, "
                f"{FLAGS.fmnist_float_epochs} shared float (Adam 3e-3) + {FLAGS.fmnist_epochs} method epochs "
                f"(Adam 1e-3), cosine, batch 64, no augmentation")
        seeds = FLAGS.fmnist_seeds
    else:
        raise app.UsageError(f"unknown data set {name!r}; known: person96, fashion_mnist")
    if FLAGS.quick:
        options.update(_QUICK, init_from=None, image_size=16 if name == "person96" else 28)
        text, seeds = "quick smoke run (small_cnn, 64 images, 1 + 1 epochs)", 1
    return options, text, seeds


def run_method(setup, method, bits, options):
    if method == "qgt_mixed":
        sizes = layer_kinds.kernel_sizes(setup.pretrained()[0])
        return recipes.qgt_mixed(setup, math.ceil(FLAGS.mixed_bits * sum(sizes.values()) / 8))
    return baselines.METHODS[method](setup, bits, **options)


def method_label(method, options):
    return f"ptq_{options['scale']}" if method == "ptq" else method


def run_dataset(name):
    """Rows of data set ``name``: every method of METHOD_GRID over FLAGS.seeds seeds."""
    options, text, seeds = dataset_config(name)
    measured = {}  # (label, bits) -> list of RecipeResult
    for seed in range(seeds):
        setup = recipes.build_setup(seed=seed, verbose=FLAGS.verbose, **options)
        for method, bits, method_options in METHOD_GRID:
            started = time.perf_counter()
            result = run_method(setup, method, bits, method_options)
            label = method_label(method, method_options)
            print(f"[{name} seed {seed}] {label} {result.bits}: {100 * result.accuracy:.2f}% "
                  f"{result.weight_bytes:,} B ({time.perf_counter() - started:.0f} s)", flush=True)
            measured.setdefault((label, bits), []).append(result)
    float_accuracy = float(np.mean([r.accuracy for r in measured[("float", layer_kinds.FLOAT_BITS)]]))
    rows = []
    for (label, _), results in measured.items():
        accuracies = [r.accuracy for r in results]
        rows.append({
            "dataset": name, "method": "ptq" if label.startswith("ptq") else label,
            "bits": float(np.mean([r.bits for r in results])), "seeds": len(results),
            "accuracy_mean": float(np.mean(accuracies)), "accuracy_std": float(np.std(accuracies)),
            "float_accuracy": float_accuracy,
            "drop_pts": 100 * (float_accuracy - float(np.mean(accuracies))),
            "weight_bytes": int(np.mean([r.weight_bytes for r in results])),
            "train_seconds": float(np.mean([r.train_seconds for r in results])),
            **({"scale": label[4:]} if label.startswith("ptq") else {}),
        })
    return rows, f"**{name}**: {text}; {seeds} seed(s); {setup.data.description}."


def best_baseline(rows, dataset, bits):
    """The most accurate non-QGT row of ``dataset`` at ``bits``."""
    baselines = [r for r in rows if r["dataset"] == dataset and r["bits"] == bits
                 and r["method"] not in ("qgt", "qgt_mixed", "float")]
    return max(baselines, key=lambda r: r["accuracy_mean"], default=None)


def goals(rows):
    """Lines saying, with the numbers, whether each goal of issue 3 was reached."""
    lines = []
    for dataset, allowed in (("person96", 1.0), ("fashion_mnist", 2.0)):
        by_key = {(r["method"], r["bits"]): r for r in rows if r["dataset"] == dataset}
        if ("qgt", 2) not in by_key:
            continue
        qgt2 = by_key[("qgt", 2)]
        lines.append(f"- {dataset}: QGT 2-bit drop {qgt2['drop_pts']:.2f} pts (goal <= {allowed}): "
                     f"{'reached' if qgt2['drop_pts'] <= allowed else 'NOT reached'}.")
        for bits in (4, 2):
            mine, best = by_key.get(("qgt", bits)), best_baseline(rows, dataset, bits)
            if mine is None or best is None:
                continue
            label = best["method"] + (f" ({best['scale']})" if "scale" in best else "")
            verdict = "ahead of" if mine["accuracy_mean"] > best["accuracy_mean"] else "NOT ahead of"
            lines.append(f"- {dataset} {bits}-bit: QGT {100 * mine['accuracy_mean']:.2f}% is {verdict} the best "
                         f"baseline, {label} {100 * best['accuracy_mean']:.2f}%.")
    return lines


def markdown(rows, configs, run):
    header = ("| data set | method | bits | seeds | accuracy % (mean ± std) | float % | drop (pts) | weight bytes "
              "| train s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    table = "\n".join(
        f"| {r['dataset']} | {r['method']}{' (' + r['scale'] + ')' if 'scale' in r else ''} | {r['bits']:g} | "
        f"{r['seeds']} | {100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f} | "
        f"{100 * r['float_accuracy']:.2f} | {r['drop_pts']:+.2f} | {r['weight_bytes']:,} | {r['train_seconds']:.0f} |"
        for r in rows)
    return "\n".join([
        "# Accuracy against weight size", "",
        provenance.describe(run) + " The machine was shared with other work.", "",
        *[f"- {config}" for config in configs], "",
        "Every method of a data set gets the same epochs (shared float pre-training + its own epochs). "
        "Accuracy is on the quantized model: kernels snapped to the grid (ptq, qat_ste, qgt), the tfmot "
        "fake-quantized model, or the stripped clustered model. Weight bytes: packed kernel bits at the "
        "packer's storage widths (conv, depthwise, dense; biases, BatchNormalization and per-channel scales not "
        "counted), plus the float32 codebooks for clustering (tfmot 0.8 leaves depthwise kernels unclustered: "
        "they count as float32); float counts 4 B per weight. ptq, qat_ste and qgt keep the first "
        "conv and the dense layer at 8 bits (hence more bytes than tfmot's all-layer b-bit rows); qgt_mixed "
        f"picks 8/4/2 bits per layer with `allocate_bits` under {FLAGS.mixed_bits} bits per weight. tfmot rows "
        "quantize activations to 8 bits too; ours quantize weights only.", "",
        header + table, "", "## Goals (issue 3)", "", *goals(rows), ""])


def plot(rows, path):
    """Writes a PNG with one panel per data set: test accuracy (mean +- std over seeds) against packed weight
    bytes, one marker per method, labeled with its bits."""
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    figure, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.8), squeeze=False)
    for axis, dataset in zip(axes.flat, datasets):
        shown = set()
        for row in (r for r in rows if r["dataset"] == dataset):
            method = row["method"] if row["method"] != "ptq" else f"ptq_{row.get('scale', 'mse')}"
            color, marker = METHOD_STYLES.get(method, ("tab:cyan", "o"))
            axis.errorbar(row["weight_bytes"], 100 * row["accuracy_mean"], yerr=100 * row["accuracy_std"],
                          color=color, marker=marker, linestyle="none", capsize=3,
                          label=None if method in shown else method)
            shown.add(method)
            axis.annotate(f"{row['bits']:g}", (row["weight_bytes"], 100 * row["accuracy_mean"]),
                          textcoords="offset points", xytext=(4, 3), fontsize=7, color=color)
        axis.set_xscale("log")
        axis.set_xlabel("packed kernel bytes (log)")
        axis.set_ylabel("test accuracy after quantization (%)")
        axis.set_title(dataset)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_results(rows, configs, run):
    out = pathlib.Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    run = run.record()
    out.with_suffix(".json").write_text(json.dumps({"provenance": run, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, configs, run))
    plot(rows, out.with_suffix(".png"))
    return out.with_suffix(".md")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    run = provenance.Run()
    rows, configs = [], []
    for name in FLAGS.datasets:
        dataset_rows, config = run_dataset(name)
        rows += dataset_rows
        configs.append(config)
        written = write_results(rows, configs, run)  # after each data set
    print(written.read_text())


if __name__ == "__main__":
    app.run(main)
