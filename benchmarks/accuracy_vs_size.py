"""Accuracy against model bytes for QGT and the baselines (qgt_keras.recipes and benchmarks/baselines.py), with
measurements that show generalization: person96's spatial split (test windows at positions no training
window covers) besides its temporal one, the out-of-scene crops data/ood scored against the float teacher,
and Fashion-MNIST with its 60k training images.

    python benchmarks/accuracy_vs_size.py            # the committed configuration (see --help)
    python benchmarks/accuracy_vs_size.py --quick --out=/tmp/quick   # every row once, in minutes
    python benchmarks/accuracy_vs_size.py --replot --out=benchmarks/results/accuracy_vs_size_person
                                                     # draw the figures again from the committed JSON

The harness is the same for every method of a data set: per seed one float start (the MLPerf Tiny VWW
weights for person96, float pre-training for Fashion-MNIST) that every method fine-tunes from for the same
epochs with the same loss (distillation from the float teacher when configured) and the same post-processing
(BatchNormalization re-estimated after snapping for every weight-quantized method, unless the recipe keeps
the teacher's statistics); PTQ quantizes the float model fine-tuned for those epochs. Variants of a recipe
are shown beside the methods, off their Pareto front; the two-stage ones train twice the epochs and are also
compared with the float model trained as long. Rows at 2 and 4 bits run every seed; 8-bit and
mixed-precision rows run --seeds_8bit. Each row is seeded by its seed and key and reads its seed's data
afresh, whatever ran before it.

Writes <out>.json ({"provenance", "config", "rows", "runs"}), <out>.md (tables, Pareto fronts, goals),
<out>.png (accuracy against deployed bytes, Pareto front drawn) and <out>_ood.png (out-of-scene agreement and
AUC against the teacher). While it runs, every finished run is appended to <out>.partial.jsonl and each seed's
float start is kept in <out>.partial/, so an interrupted run resumes where it stopped (same flags); both are
removed when the results are written. --replot trains nothing: it reads the "rows" of an existing <out>.json
and draws <out>.png and <out>_ood.png again from them, leaving the .json and .md as they are (the other flags
are ignored), e.g. after a change to the figures.
"""

import dataclasses
import json
import math
import os
import pathlib
import shutil
import textwrap
import time
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only, no display

import matplotlib.lines  # noqa: E402
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from absl import app, flags  # noqa: E402

import baselines  # noqa: E402
import deployed  # noqa: E402
import generalization  # noqa: E402
import person_network  # noqa: E402
import provenance  # noqa: E402
from qgt_keras import datasets, layer_kinds, recipes, serialization  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
PERSON_DATASETS = ("person96_spatial", "person96")

FLAGS = flags.FLAGS
flags.DEFINE_string("out", str(REPO_ROOT / "benchmarks" / "results" / "accuracy_vs_size"),
                    "Output path without extension.")
flags.DEFINE_list("datasets", ["person96_spatial", "person96", "fashion_mnist"], "Data sets to run.")
flags.DEFINE_integer("seeds", 3, "Seeds (0, 1, ...) of every float, PTQ, 2- and 4-bit row.", lower_bound=1)
flags.DEFINE_list("rows", [], "Only the rows with these keys (e.g. float@32,qgt@2,'qgt (distilled)@2') and the "
                  "teacher; default: every row of each data set's grid.")
flags.DEFINE_integer("seeds_8bit", 1, "Seeds of the 8-bit and mixed-precision rows.", lower_bound=1)
flags.DEFINE_string("teacher", person_network.MLPERF_WEIGHTS,
                    "person96: the float start and teacher (the MLPerf Tiny VWW weights, trained on real VWW).")
flags.DEFINE_integer("person_epochs", 3, "person96: epochs of every method.", lower_bound=1)
flags.DEFINE_float("distill_temperature", 2.0, "Temperature of the distillation (every method, and the variants).")
flags.DEFINE_float("distill_weight", 0.0, "Every method: share of the float teacher's soft targets in the loss "
                   "(0: labels only; the distilled variants use 1).")
flags.DEFINE_integer("fmnist_float_epochs", 8, "Fashion-MNIST: shared float pre-training epochs.", lower_bound=0)
flags.DEFINE_integer("fmnist_epochs", 1, "Fashion-MNIST: epochs of every method.", lower_bound=1)
flags.DEFINE_integer("fmnist_batch", 128, "Fashion-MNIST: batch size.", lower_bound=1)
flags.DEFINE_float("mixed_bits", 2.5, "qgt_mixed budget in mean bits per kernel weight.")
flags.DEFINE_bool("deterministic", True, "tf.config.experimental.enable_op_determinism().")
flags.DEFINE_integer("verbose", 2, "Keras fit verbosity.")
flags.DEFINE_bool("replot", False, "Train nothing: draw <out>.png and <out>_ood.png again from the rows of an "
                  "existing <out>.json (the .json and .md are left as they are; the other flags are ignored).")
flags.DEFINE_bool("quick", False, "A smoke run: small_cnn on 64 images at 16x16 (person96) and 64 Fashion-MNIST "
                  "images, one float and one method epoch, one seed, no MLPerf start; numbers mean nothing.")

METHOD_STYLES = {
    "float": ("black", "*"), "ptq_max": ("tab:gray", "v"), "ptq_mse": ("tab:brown", "^"),
    "qat_ste": ("tab:blue", "s"), "tfmot_qat": ("tab:orange", "D"), "tfmot_cluster": ("tab:purple", "P"),
    "qgt": ("tab:red", "o"), "qgt_mixed": ("tab:green", "X"),
}
_QUICK = dict(model_name="small_cnn", limit=64, test_limit=64, pretrain_epochs=1, finetune_epochs=1)


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of a data set's table: ``method`` of baselines.METHODS at ``bits`` with its ``options``, on the
    data set's setup changed by ``variant`` (setup fields, e.g. {"distillation": None}) under ``label``. For
    qgt_mixed ``bits`` is the budget in mean bits per kernel weight (None: --mixed_bits)."""

    method: str
    bits: object
    options: dict = dataclasses.field(default_factory=dict)
    variant: dict = dataclasses.field(default_factory=dict)
    label: str = None

    @property
    def name(self):
        if self.label:
            return self.label
        return f"ptq_{self.options['scale']}" if self.method == "ptq" else self.method

    @property
    def key(self):
        return f"{self.name}@{self.bits}"

    @property
    def every_seed(self):
        return self.method in ("float", "ptq") or self.bits in (2, 4)

    @property
    def reference(self):
        """A variant of a method or the teacher itself: shown, but not one of the methods compared."""
        return bool(self.variant) or "schedule" in self.options or self.method == "teacher"


def distilled(weight=1.0):
    """A variant trained against the data set's float teacher (:func:`distillation`) with ``weight``."""
    return {"distillation": weight}


FROZEN_BATCHNORM = {"freeze_batchnorm": True}
ANCHORED_BATCHNORM = {"anchor_batchnorm": True}
# The variants that also learn the teacher's soft targets on data/transfer's unlabeled photos of other scenes,
# as they come or with the teacher's "person" images drawn for 40% of them; that recipe also at 4 bits, with
# mixed bits and with 8 epochs, to tell what the bits cost from what the training budget does.
WITH_TRANSFER = {"unlabeled": True}
PERSON_OVERSAMPLED = {"unlabeled_oversample": (datasets.VWW_CLASS_NAMES.index("person"), 0.4)}
TRANSFER_LABEL = "qgt (distilled + data/transfer)"
BALANCED_LABEL = "qgt (distilled + data/transfer + 40% person)"
BALANCED = {**distilled(), **WITH_TRANSFER, **PERSON_OVERSAMPLED}
LONGER_LABEL = "qgt (distilled + data/transfer + 40% person; 8 epochs)"
# The recipe with each layer's grid scales re-estimated every 16 training steps instead of every step.
SCALE_INTERVAL = {"schedule": recipes.QGTSchedule(scale_interval=16)}
SCALE_INTERVAL_NOTE = "scales every 16 steps"
# Two stages: the student starts from the data set's float row (the float start fine-tuned on the labels for
# the same epochs) and learns from it as its teacher, so it trains twice the epochs of the other rows.
FROM_FLOAT = {"from_float": True}
FROM_FLOAT_LABEL = "qgt (from the fine-tuned float, distilled from it)"
FROM_FLOAT_STE_LABEL = FROM_FLOAT_LABEL.replace("qgt", "qat_ste")
# The float model fine-tuned for twice the epochs: the two-stage rows' budget, to compare them at equal cost.
TWICE_THE_EPOCHS = {"twice_the_epochs": True}
TWICE_THE_EPOCHS_LABEL = "float (twice the epochs)"
_FLOAT, _MIXED = layer_kinds.FLOAT_BITS, None
BASELINE_ROWS = (
    Row("float", _FLOAT),
    Row("ptq", 8, {"scale": "mse"}), Row("ptq", 4, {"scale": "max"}), Row("ptq", 4, {"scale": "mse"}),
    Row("ptq", 2, {"scale": "max"}), Row("ptq", 2, {"scale": "mse"}),
    Row("qat_ste", 4), Row("qat_ste", 2),
    Row("tfmot_qat", 8), Row("tfmot_qat", 4), Row("tfmot_qat", 2),
    Row("tfmot_cluster", 4), Row("tfmot_cluster", 2),
    Row("qgt", 8), Row("qgt", 4), Row("qgt", 2), Row("qgt_mixed", _MIXED),
)
# Rows per data set, in table order. The variants show what distillation and frozen BatchNormalization do.
# Each row is seeded by its seed and key (row_seed) and reads fresh pipelines (seed_setup): its draws and its data
# order do not depend on the rows run before it.
TEACHER = Row("teacher", _FLOAT, label="teacher (MLPerf float, not fine-tuned)")
SCALE_INTERVAL_ROW = Row("qgt", 2, SCALE_INTERVAL, label=f"qgt ({SCALE_INTERVAL_NOTE})")
GRIDS = {
    "person96_spatial": (
        TEACHER, Row("float", _FLOAT), Row("ptq", 4, {"scale": "mse"}), Row("ptq", 2, {"scale": "mse"}),
        Row("qat_ste", 2), Row("tfmot_qat", 2), Row("tfmot_cluster", 2), Row("qgt", 4), Row("qgt", 2),
        Row("qgt", 2, variant=distilled(), label="qgt (distilled)"),
        Row("qgt", 2, variant={**distilled(), **WITH_TRANSFER}, label=TRANSFER_LABEL),
        Row("qgt", 2, variant=BALANCED, label=BALANCED_LABEL),
        Row("qgt", 2, variant={**BALANCED, "finetune_epochs": 8}, label=LONGER_LABEL),
        Row("qgt", 4, variant=BALANCED, label=BALANCED_LABEL),
        Row("qgt_mixed", _MIXED, variant=BALANCED, label=BALANCED_LABEL.replace("qgt", "qgt_mixed")),
        SCALE_INTERVAL_ROW,
        Row("qgt_mixed", _MIXED, SCALE_INTERVAL, variant=BALANCED,
            label=BALANCED_LABEL.replace("qgt", "qgt_mixed").replace(")", f"; {SCALE_INTERVAL_NOTE})")),
        Row("float", _FLOAT, variant=distilled(), label="float (distilled)"),
        Row("float", _FLOAT, variant={**distilled(), **WITH_TRANSFER}, label="float (distilled + data/transfer)"),
        Row("float", _FLOAT, variant={**distilled(), **FROZEN_BATCHNORM}, label="float (distilled, BN frozen)"),
        Row("qgt", 2, variant={**distilled(), **FROM_FLOAT}, label=FROM_FLOAT_LABEL),
        Row("qat_ste", 2, variant={**distilled(), **FROM_FLOAT}, label=FROM_FLOAT_STE_LABEL),
        Row("float", _FLOAT, variant=TWICE_THE_EPOCHS, label=TWICE_THE_EPOCHS_LABEL),
        # The teacher's BatchNormalization statistics kept through the transfer recipe (float and mixed bits).
        Row("float", _FLOAT, variant={**distilled(), **WITH_TRANSFER, **FROZEN_BATCHNORM},
            label="float (distilled + data/transfer, BN frozen)"),
        Row("qgt_mixed", _MIXED, variant={**BALANCED, **FROZEN_BATCHNORM},
            label=BALANCED_LABEL.replace("qgt", "qgt_mixed").replace(")", "; BN frozen)")),
        # BatchNormalization anchored to the teacher's statistics instead of re-estimated on the mix.
        Row("qgt_mixed", _MIXED, variant={**BALANCED, **ANCHORED_BATCHNORM},
            label=BALANCED_LABEL.replace("qgt", "qgt_mixed").replace(")", "; BN anchored)")),
        *(Row("qgt", bits, variant={**BALANCED, **ANCHORED_BATCHNORM},
              label=BALANCED_LABEL.replace(")", "; BN anchored)")) for bits in (4, 2)),
        # The transfer recipe's bits per weight against its out-of-scene agreement, around --mixed_bits.
        *(Row("qgt_mixed", budget, variant=BALANCED,
              label=BALANCED_LABEL.replace("qgt", "qgt_mixed").replace(")", f"; under {budget} bits)"))
          for budget in (2.2, 3.0)),
    ),
    "person96": (TEACHER, Row("float", _FLOAT), Row("qat_ste", 2), Row("qgt", 2)),
    "fashion_mnist": BASELINE_ROWS + (SCALE_INTERVAL_ROW,),
}


def distillation(name, weight):
    """Distillation from data set ``name``'s float teacher: the MLPerf weights for person96, the float start
    for Fashion-MNIST (and in a quick run); None for weight 0."""
    if weight == 0:
        return None
    teacher = FLAGS.teacher if name in PERSON_DATASETS and not FLAGS.quick else None
    return recipes.Distillation(teacher, FLAGS.distill_temperature, weight)


def describe_training(setup_fields):
    distilled_ = setup_fields.get("distillation")
    text = (f"distillation from the float teacher (T {distilled_.temperature:g}, weight {distilled_.weight:g})"
            if distilled_ is not None else "hard labels")
    return text + (", BatchNormalization frozen" if setup_fields.get("freeze_batchnorm") else
                   ", BatchNormalization re-estimated after snapping")


def dataset_config(name):
    """(build_setup arguments, a description of the configuration) of data set ``name``."""
    common = dict(distillation=distillation(name, FLAGS.distill_weight), finetune_learning_rate=1e-3)
    how = describe_training(common)
    if name in PERSON_DATASETS:
        options = dict(dataset="person_folder" if name == "person96" else name, model_name="mobilenet_v1",
                       alpha=0.25, image_size=96, batch_size=32, init_from=FLAGS.teacher, pretrain_epochs=0,
                       finetune_epochs=FLAGS.person_epochs, **common)
        split = "temporal split (data/person96 train/test)" if name == "person96" else (
            f"spatial split (test windows left of x = {datasets.SPATIAL_SPLIT_X - datasets.PERSON96_WINDOW}, "
            f"training windows right of x = {datasets.SPATIAL_SPLIT_X}, every frame)")
        text = (f"MobileNetV1-0.25 96x96 RGB from the MLPerf Tiny VWW float weights (also the teacher), {split}, "
                f"{FLAGS.person_epochs} epochs per method, batch 32, Adam 1e-3 cosine, {how}")
    elif name == "fashion_mnist":
        options = dict(dataset="fashion_mnist", model_name="mobilenet_28", alpha=1.0, image_size=28,
                       batch_size=FLAGS.fmnist_batch, augment=False, pretrain_epochs=FLAGS.fmnist_float_epochs,
                       finetune_epochs=FLAGS.fmnist_epochs, learning_rate=3e-3, **common)
        text = (f"MobileNet-28 (alpha 1), all 60k training images, 10k test, {FLAGS.fmnist_float_epochs} shared "
                f"float epochs (Adam 3e-3) + {FLAGS.fmnist_epochs} epochs per method (Adam 1e-3), cosine, batch "
                f"{FLAGS.fmnist_batch}, no augmentation; teacher: the float start; {how}")
    else:
        raise app.UsageError(f"unknown data set {name!r}; known: {', '.join(GRIDS)}")
    if FLAGS.quick:
        options.update(_QUICK, init_from=None, image_size=16 if name in PERSON_DATASETS else 28)
        text = "quick smoke run (small_cnn, 64 images, 1 + 1 epochs, the float start as teacher)"
    return options, text


class Partial:
    """The runs finished so far (<out>.partial.jsonl) and the float starts (<out>.partial/), for resuming."""

    def __init__(self, out, config):
        self.path, self.folder, self.config = out.with_suffix(".partial.jsonl"), out.with_suffix(".partial"), config
        self.runs = []
        if self.path.exists():
            lines = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            if lines and lines[0] == {"config": config}:
                self.runs = lines[1:]
                print(f"resuming: {len(self.runs)} runs done in {self.path}", flush=True)
            else:
                print(f"{self.path} has another configuration: starting over", flush=True)
        if not self.runs:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"config": config}) + "\n")
        self.folder.mkdir(parents=True, exist_ok=True)

    def done(self, dataset, seed, row):
        return next((r for r in self.runs if (r["dataset"], r["seed"], r["key"]) == (dataset, seed, row.key)), None)

    def add(self, run):
        self.runs.append(run)
        with open(self.path, "a") as f:
            f.write(json.dumps(run) + "\n")

    def float_start(self, dataset, seed, setup):
        """Loads the seed's float start into ``setup`` if an earlier run kept it, else trains and keeps it."""
        path = self.folder / f"{dataset}_seed{seed}.npz"
        if path.exists():
            saved = np.load(path, allow_pickle=False)
            weights = [saved[f"w{i}"] for i in range(len(saved.files) - 1)]
            setup._pretrained = (weights, float(saved["seconds"]), {})
        else:
            _, seconds, _ = setup.pretrained()
            weights = setup._pretrained[0]
            np.savez(path, seconds=seconds, **{f"w{i}": w for i, w in enumerate(weights)})

    def remove(self):
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def run_row(setup, row):
    if row.method == "teacher":
        teacher = serialization.load_model(FLAGS.teacher) if not FLAGS.quick else setup.pretrained()[0]
        sizes = layer_kinds.kernel_sizes(teacher)
        return recipes.RecipeResult("teacher", _FLOAT, teacher, {}, layer_kinds.weight_bytes(sizes, {}), 0.0,
                                    recipes.evaluate(teacher, setup.data), {})
    if row.method == "qgt_mixed":
        sizes = layer_kinds.kernel_sizes(setup.pretrained()[0])
        budget_bits = FLAGS.mixed_bits if row.bits is _MIXED else row.bits
        return recipes.qgt_mixed(setup, math.ceil(budget_bits * sum(sizes.values()) / 8), **row.options)
    return baselines.METHODS[row.method](setup, row.bits, **row.options)


class OutOfScene:
    """The out-of-scene crops and the teacher's P(person) on them."""

    def __init__(self, setup, image_size):
        self.crops = datasets.read_out_of_scene(image_size=(image_size, image_size))
        teacher = setup.pretrained()[0] if FLAGS.quick else serialization.load_model(FLAGS.teacher)
        self.teacher_person = generalization.person_probability(
            lambda x: teacher.predict(x, verbose=0, batch_size=128), self.crops.images)

    def measure(self, predict):
        student = generalization.person_probability(predict, self.crops.images)
        return generalization.out_of_scene(student, self.teacher_person, self.crops)


def measure_run(name, seed, row, setup, result, ood):
    """The record of one finished run: accuracy, bytes, and for person96 the out-of-scene measurements of the
    Keras model and of the deployed int8 model (for our methods)."""
    calibration = setup.data.calibration[0][:64]
    run = {"dataset": name, "seed": seed, "key": row.key, "label": row.name, "method": row.method,
           "variant": row.reference,
           "bits": float(result.bits), "accuracy": result.accuracy, "weight_bytes": int(result.weight_bytes),
           "train_seconds": result.train_seconds, "layer_bits": result.layer_bits}
    if seed == 0:  # the deployed size does not depend on the seed
        run["deployed_bytes"] = deployed.deployed_bytes("float" if row.method == "teacher" else row.method, result,
                                                        calibration)
    if ood is not None:
        run["ood"] = ood.measure(lambda x: result.model.predict(x, verbose=0, batch_size=128))
        if row.method in deployed.OURS and row.method != "ptq":
            int8 = deployed.packed_int8(result, calibration)
            run["ood_int8"] = ood.measure(lambda x: deployed.tflm_probabilities(int8, x))
    return run


def grid(name):
    """The rows of data set ``name`` that --rows selects (the teacher, a reference, always)."""
    if not FLAGS.rows:
        return GRIDS[name]
    known = {row.key for rows in GRIDS.values() for row in rows if row.method != "teacher"}
    unknown = sorted(set(FLAGS.rows) - known)
    if unknown:
        raise app.UsageError(f"--rows: unknown row keys {unknown}; known: {sorted(known)}")
    return tuple(row for row in GRIDS[name] if row.key in FLAGS.rows or row.method == "teacher")


def row_seed(seed, row):
    """The random seed a row trains with in seed ``seed``: its own (from its key), so that its draws do not
    depend on which rows ran before it in the same process."""
    return (1_000_003 * seed + zlib.crc32(row.key.encode())) % 2**31


def seed_setup(name, seed, options, partial):
    """Seed ``seed``'s data and float start, built afresh for every row: a tf.data pipeline reshuffles at each
    pass, so a shared one would give a row a data order that depends on the epochs the rows before it took."""
    setup = recipes.build_setup(seed=seed, verbose=FLAGS.verbose, **options)
    partial.float_start(name, seed, setup)
    return setup


def run_dataset(name, partial, progress):
    """Every row of GRIDS[name] over the seeds, resuming from ``partial``; calls ``progress()`` after each seed;
    returns the data set's runs."""
    options, text = dataset_config(name)
    seeds = 1 if FLAGS.quick else FLAGS.seeds
    for seed in range(seeds):
        rows = [row for row in grid(name) if row.every_seed or seed < FLAGS.seeds_8bit]
        if all(partial.done(name, seed, row) for row in rows):
            continue
        # The float start is trained (or loaded) here, on pipelines no row reads after it; rows load it.
        setup = seed_setup(name, seed, options, partial)
        ood = OutOfScene(setup, options["image_size"]) if name in PERSON_DATASETS else None
        for row in rows:
            if partial.done(name, seed, row):
                continue
            setup = seed_setup(name, seed, options, partial)
            keras.utils.set_random_seed(row_seed(seed, row))
            row_setup = setup
            if row.variant:
                changes = dict(row.variant)
                if "distillation" in changes:
                    changes["distillation"] = distillation(name, changes["distillation"])
                if FLAGS.quick:  # the smoke run's one-epoch teacher calls no transfer crop "person"
                    changes.pop("unlabeled_oversample", None)
                if changes.pop("twice_the_epochs", False):
                    changes["finetune_epochs"] = 2 * setup.finetune_epochs
                if changes.pop("from_float", False):
                    fine_tuned = recipes.float_training(setup)
                    changes["_pretrained"] = (fine_tuned.model.get_weights(), fine_tuned.train_seconds, {})
                    changes["_teacher"] = None  # Distillation(teacher=None): the start, i.e. the fine-tuned float
                    changes["distillation"] = dataclasses.replace(changes["distillation"], teacher=None)
                if changes.pop("unlabeled", False):
                    unlabeled = datasets.UnlabeledImages.at(
                        datasets.bundled_transfer_dir(), image_size=(options["image_size"],) * 2,
                        batch_size=options["batch_size"], seed=seed)
                    changes["data"] = dataclasses.replace(setup.data, unlabeled=unlabeled)
                row_setup = dataclasses.replace(setup, _float_result=None, **changes)
            started = time.perf_counter()
            result = run_row(row_setup, row)
            run = measure_run(name, seed, row, row_setup, result, ood)
            run["wall_seconds"] = time.perf_counter() - started
            partial.add(run)
            print(f"[{name} seed {seed}] {row.name} {result.bits:g}: {100 * result.accuracy:.2f}%"
                  + (f", out-of-scene agreement {100 * run['ood']['agreement']:.1f}%" if ood else "")
                  + f" ({run['wall_seconds']:.0f} s)", flush=True)
        progress()
    return [r for r in partial.runs if r["dataset"] == name], text


def _mean_std(values):
    values = [v for v in values if v is not None]
    return (float(np.mean(values)), float(np.std(values))) if values else (None, None)


def aggregate(runs):
    """One row per (data set, label, bits): means and standard deviations over the seeds."""
    grouped = {}
    for run in runs:
        grouped.setdefault((run["dataset"], run["key"]), []).append(run)
    floats = {dataset: _mean_std([r["accuracy"] for r in group])[0]
              for (dataset, key), group in grouped.items() if key == f"float@{_FLOAT}"}
    rows = []
    for (dataset, _), group in grouped.items():
        first = group[0]
        accuracy, accuracy_std = _mean_std([r["accuracy"] for r in group])
        row = {"dataset": dataset, "label": first["label"], "method": first["method"], "variant": first["variant"],
               "bits": float(np.mean([r["bits"] for r in group])), "seeds": len(group),
               "accuracy_mean": accuracy, "accuracy_std": accuracy_std,
               "float_accuracy": floats.get(dataset),
               "drop_pts": 100 * (floats[dataset] - accuracy) if dataset in floats else None,
               "weight_bytes": int(np.mean([r["weight_bytes"] for r in group])),
               "deployed_bytes": next((r["deployed_bytes"] for r in group if "deployed_bytes" in r), None),
               "train_seconds": float(np.mean([r["train_seconds"] for r in group]))}
        for source in ("ood", "ood_int8"):
            if source in first:
                for metric in first[source]:
                    row[f"{source}_{metric}"], row[f"{source}_{metric}_std"] = _mean_std(
                        [r[source][metric] for r in group])
        rows.append(row)
    for dataset in {row["dataset"] for row in rows}:
        # The methods as the benchmark configures them; the variants of a recipe and the teacher stay out.
        compared = [row for row in rows if row["dataset"] == dataset and row["deployed_bytes"] is not None
                    and not row["variant"]]
        front = generalization.pareto_front([(row["deployed_bytes"], row["accuracy_mean"]) for row in compared])
        for index, row in enumerate(compared):
            row["pareto"] = index in front
    return rows


def _pct(value, std=None):
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _auc(value):
    return "n/a" if value is None else f"{value:.4f}"


def _find(rows, dataset, label, bits):
    return next((r for r in rows if r["dataset"] == dataset and r["label"] == label and r["bits"] == bits), None)


def goals(rows):
    """Lines saying, with the numbers, whether each goal of issue 9 was reached."""
    lines = []
    for label in ("qgt", TRANSFER_LABEL, BALANCED_LABEL, LONGER_LABEL):
        student = _find(rows, "person96_spatial", label, 2)
        if student is None:
            continue
        for source, what in (("ood", "Keras model"), ("ood_int8", "deployed int8 / packed model")):
            agreement, auc = student.get(f"{source}_agreement"), student.get(f"{source}_auc_vs_teacher")
            if agreement is None:
                continue
            reached = agreement >= 0.97 and auc is not None and auc >= 0.97
            lines.append(f"- Out of scene, {label} 2-bit ({what}) vs its float teacher: agreement "
                         f"{_pct(agreement, student[source + '_agreement_std'])}%, AUC {_auc(auc)} (goal >= 97% and "
                         f">= 0.97): {'reached' if reached else 'NOT reached'}.")
        if student.get("drop_pts") is not None:
            lines.append(f"- person96 spatial split: {label} 2-bit drop {student['drop_pts']:.2f} pts vs float "
                         f"(mean of {student['seeds']} seeds; goal <= 1.0): "
                         f"{'reached' if student['drop_pts'] <= 1.0 else 'NOT reached'}.")
    # The two-stage rows learn from the fine-tuned float, not from the MLPerf teacher the out-of-scene figures
    # are measured against, and train twice the epochs: their goal is the drop, at equal training budget too.
    twice = _find(rows, "person96_spatial", TWICE_THE_EPOCHS_LABEL, _FLOAT)
    for label in (FROM_FLOAT_LABEL, FROM_FLOAT_STE_LABEL):
        student = _find(rows, "person96_spatial", label, 2)
        if student is None or student.get("drop_pts") is None:
            continue
        line = (f"- person96 spatial split: {label} 2-bit drop {student['drop_pts']:.2f} pts vs the float model it "
                f"starts from (mean of {student['seeds']} seeds)")
        if twice is not None:
            drop = 100 * (twice["accuracy_mean"] - student["accuracy_mean"])
            line += (f", {drop:.2f} pts vs the float model fine-tuned for twice the epochs, the same training budget "
                     f"({_pct(twice['accuracy_mean'])}%; goal <= 1.0): {'reached' if drop <= 1.0 else 'NOT reached'}")
        lines.append(line + ".")
    fashion = _find(rows, "fashion_mnist", "qgt", 2)
    if fashion is not None and fashion["drop_pts"] is not None:
        lines.append(f"- Fashion-MNIST: float {_pct(fashion['float_accuracy'])}%, QGT 2-bit drop "
                     f"{fashion['drop_pts']:.2f} pts (goal <= 1.5): "
                     f"{'reached' if fashion['drop_pts'] <= 1.5 else 'NOT reached'}.")
    for dataset in ("fashion_mnist", "person96_spatial"):
        for bits in (4, 2):
            mine = _find(rows, dataset, "qgt", bits)
            if mine is not None and "pareto" in mine:
                lines.append(f"- {dataset} {bits}-bit: QGT is {'on' if mine['pareto'] else 'NOT on'} the Pareto "
                             f"front of accuracy against deployed bytes.")
    return lines


def markdown(rows, configs, run):
    lines = ["# Accuracy against model size, and out of scene", "",
             provenance.describe(run) + " The machine was shared with other work.", "",
             *[f"- **{name}**: {text}; {FLAGS.seeds} seeds for float, PTQ, 2- and 4-bit rows, "
               f"{FLAGS.seeds_8bit} for 8-bit and mixed rows." for name, text in configs], "",
             "Accuracy is on the quantized model: kernels snapped to the grid (ptq, qat_ste, qgt, qgt_mixed), the "
             "tfmot fake-quantized model, or the stripped clustered model. *kernel B*: conv, depthwise and dense "
             "kernels at their storage width (float32 where a method leaves them float: tfmot 0.8 does not cluster "
             "depthwise kernels), plus the float32 codebooks of clustering. *deployed B*: the file a TFLite-Micro "
             "firmware holds (benchmarks/deployed.py: our bit-packed format for ptq, qat_ste, qgt and qgt_mixed; "
             "tf.lite's INT4/int8 file for tfmot QAT; TFLM's LUT compression of the int8 clustered model; the "
             "float .tflite). *Pareto*: no other row of the data set is as accurate with fewer deployed bytes. "
             "ptq, qat_ste and qgt keep the first conv and the dense layer at 8 bits; qgt_mixed picks 8/4/2 bits "
             f"per layer with `allocate_bits` under {FLAGS.mixed_bits} bits per weight (or the budget its label "
             "names). tfmot rows quantize "
             "activations to 8 bits in training too; ours do so only in the deployed int8 model. *data/transfer* "
             "rows: each training batch also holds as many unlabeled crops of data/transfer (photos of other scenes "
             "from other packages than data/ood's), which teach through the teacher's soft targets alone; their "
             "BatchNormalization statistics are re-estimated on the same mix, except in *BN frozen* rows, which "
             "keep the start's, and *BN anchored* rows, which normalize toward the teacher's on it "
             "(`conversion.anchor_batchnorm`, also while training); *40% person*: the crops the teacher calls "
             "person (6.5% of data/transfer) are drawn for 40% of them.", ""]
    header = ("| method | bits | seeds | accuracy % | drop (pts) | kernel B | deployed B | Pareto | train s |\n"
              "|---|---:|---:|---:|---:|---:|---:|:-:|---:|")
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        lines += [f"## {dataset}", "", header]
        for r in (r for r in rows if r["dataset"] == dataset):
            deployed_bytes = f"{r['deployed_bytes']:,}" if r["deployed_bytes"] is not None else "n/a"
            accuracy = _pct(r["accuracy_mean"], r["accuracy_std"])
            drop = f"{r['drop_pts']:+.2f}" if r["drop_pts"] is not None else "n/a"  # a run without float@32
            lines.append(f"| {r['label']} | {r['bits']:g} | {r['seeds']} | {accuracy}"
                         f" | {drop} | {r['weight_bytes']:,} | {deployed_bytes} | "
                         f"{'yes' if r.get('pareto') else ''} | {r['train_seconds']:.0f} |")
        ood_rows = [r for r in rows if r["dataset"] == dataset and "ood_agreement" in r]
        if ood_rows:
            lines += ["", "Out of scene (data/ood: 720 crops of 77 photos): agreement with the float teacher's "
                      "decisions and AUC against them (± over seeds; in brackets the spread of the agreement when "
                      "whole photos are resampled), and on the 455 labeled crops accuracy, person recall and "
                      "non-person specificity. *int8*: the deployed int8 model run in TFLite-Micro (the packed "
                      "model computes the same).", "",
                      "| method | bits | agreement % | AUC | int8 agreement % | int8 AUC | labeled acc. % | "
                      "person recall % | non-person spec. % |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for r in ood_rows:
                int8 = ("n/a | n/a" if r.get("ood_int8_agreement") is None else
                        f"{_pct(r['ood_int8_agreement'], r['ood_int8_agreement_std'])} | "
                        f"{_auc(r['ood_int8_auc_vs_teacher'])}")
                lines.append(f"| {r['label']} | {r['bits']:g} | {_pct(r['ood_agreement'], r['ood_agreement_std'])} "
                             f"[{100 * r['ood_agreement_photo_std']:.1f}] | {_auc(r['ood_auc_vs_teacher'])} | {int8} | "
                             f"{_pct(r['ood_labeled_accuracy'])} | {_pct(r['ood_person_recall'])} | "
                             f"{_pct(r['ood_non_person_specificity'])} |")
        lines.append("")
    lines += ["## Goals (issue 9)", "", *goals(rows), ""]
    return "\n".join(lines)


def plot(rows, path):
    """One panel per data set: test accuracy (mean +- std over seeds) against deployed bytes, one marker per
    method labeled with its bits, the Pareto front as a step line."""
    datasets_ = list(dict.fromkeys(row["dataset"] for row in rows))
    figure, axes = plt.subplots(1, len(datasets_), figsize=(6.5 * len(datasets_), 4.8), squeeze=False)
    for axis, dataset in zip(axes.flat, datasets_):
        shown = set()
        drawn = [r for r in rows if r["dataset"] == dataset and r["deployed_bytes"] is not None]
        for row in drawn:
            style = row["label"] if row["method"] != "ptq" else row["label"]
            color, marker = METHOD_STYLES.get(style, METHOD_STYLES.get(row["method"], ("tab:cyan", "o")))
            axis.errorbar(row["deployed_bytes"], 100 * row["accuracy_mean"], yerr=100 * row["accuracy_std"],
                          color=color, marker=marker, linestyle="none", capsize=3,
                          markerfacecolor="none" if row["label"] != row["method"] and row["method"] != "ptq" else color,
                          label=None if style in shown else style)
            shown.add(style)
            axis.annotate(f"{row['bits']:g}", (row["deployed_bytes"], 100 * row["accuracy_mean"]),
                          textcoords="offset points", xytext=(4, 3), fontsize=7, color=color)
        front = sorted((r["deployed_bytes"], 100 * r["accuracy_mean"]) for r in drawn if r.get("pareto"))
        if front:
            axis.step(*zip(*front), where="post", color="tab:red", alpha=0.3, linewidth=2, label="Pareto front")
        axis.set_xscale("log")
        axis.set_xlabel("deployed model bytes (log)")
        axis.set_ylabel("test accuracy after quantization (%)")
        axis.set_title(dataset)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _ood_label(row, width=52):
    """A y tick label of plot_ood: the row's label and bits, wrapped (e.g. "qgt (distilled) · 2 bits"; no
    break inside "· 2 bits": textwrap breaks at ASCII spaces only)."""
    return textwrap.fill(f"{row['label']} ·\u00a0{row['bits']:.3g}\u00a0bits", width)


def _ood_bars(row, metric, scale):
    """(source, value, error) of each bar plot_ood draws for ``row``: the Keras model's, then the deployed
    int8 model's where measured (scaled; error the std over seeds, 0 where absent)."""
    return [(source, scale * row[f"{source}_{metric}"], scale * (row.get(f"{source}_{metric}_std") or 0.0))
            for source in ("ood", "ood_int8") if row.get(f"{source}_{metric}") is not None]


def _ood_range(bars, scale, goal):
    """plot_ood's x range for the (source, value, error) ``bars``: from a round tenth of ``scale`` below the
    lowest bar end minus its error bar (never hiding a bar; 0 at the lowest), to the highest end, ``scale``
    at least, plus room for the value written after it."""
    low = min([goal] + [value - error for _, value, error in bars]) - scale / 40
    low = max(0.0, scale / 10 * math.floor(low / (scale / 10)))
    high = max([scale] + [value + error for _, value, error in bars])
    return low, high + 0.12 * (high - low)


OOD_SOURCES = {"ood": ("Keras model", "tab:blue"), "ood_int8": ("deployed int8 (TFLite-Micro)", "tab:red")}


def plot_ood(rows, path):
    """Out-of-scene agreement and AUC against the float teacher: per data set with out-of-scene measures (one
    above the other) a pair of panels, agreement (%) left and AUC right, with one horizontal bar group per row
    (the Keras model, and the deployed int8 model where measured; error bars the std over seeds, the value
    written at the bar end), the goals (97%, 0.97) dashed. The figure grows with the number of rows."""
    shown = {}
    for row in rows:
        if "ood_agreement" in row:
            shown.setdefault(row["dataset"], []).append(row)
    if not shown:
        return
    counts = [len(group) for group in shown.values()]
    figure, axes = plt.subplots(len(shown), 2, sharex="col", sharey="row", squeeze=False, layout="constrained",
                                figsize=(13, 0.8 + sum(1.1 + 0.36 * n for n in counts)),
                                gridspec_kw={"height_ratios": counts})  # the same bar width in every panel
    panels = (("agreement", 100, 97, "agreement with the float teacher's decisions (%)", "{:.1f}", "goal 97%"),
              ("auc_vs_teacher", 1, 0.97, "AUC against the float teacher's decisions", "{:.3f}", "goal 0.97"))
    for column, (metric, scale, goal, xlabel, form, goal_text) in enumerate(panels):
        low, high = _ood_range([bar for group in shown.values() for row in group
                                for bar in _ood_bars(row, metric, scale)], scale, goal)
        for axis, (dataset, group) in zip(axes[:, column], shown.items()):
            for position, row in enumerate(group):
                bars = _ood_bars(row, metric, scale)
                if not bars:  # a row whose measure is None (every seed failed to give one)
                    axis.annotate("n/a", (low, position), xytext=(3, 0), textcoords="offset points", va="center",
                                  fontsize=7)
                for (source, value, error), offset in zip(bars, (-0.2, 0.2) if len(bars) == 2 else (0.0,)):
                    axis.barh(position + offset, value, 0.38, xerr=error, color=OOD_SOURCES[source][1], capsize=2,
                              error_kw={"elinewidth": 1})
                    axis.annotate(form.format(value), (value + error, position + offset), xytext=(3, 0),
                                  textcoords="offset points", va="center", fontsize=7,
                                  bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.5})
            axis.axvline(goal, color="black", linestyle="--", linewidth=1)
            axis.annotate(goal_text, (goal, 1), xycoords=("data", "axes fraction"), xytext=(0, 2),
                          textcoords="offset points", ha="center", va="bottom", fontsize=8)
            axis.set_yticks(range(len(group)), [_ood_label(row) for row in group], fontsize=8)
            axis.set_ylim(len(group) - 0.5, -0.5)  # the first row on top
            axis.set_xlim(low, high)
            axis.set_xticks([tick for tick in axis.get_xticks() if low <= tick <= scale])
            axis.tick_params(labelbottom=True)  # sharex would keep the labels of the lowest panel only
            axis.set_xlabel(xlabel, fontsize=9)
            axis.grid(alpha=0.3, axis="x")
            axis.set_title(f"{dataset}: out of scene (data/ood), {'agreement' if scale == 100 else 'AUC'}",
                           fontsize=10, pad=14)
    measured = {source for group in shown.values() for row in group for source, _, _ in
                _ood_bars(row, "agreement", 100)}
    handles = [matplotlib.patches.Patch(color=color, label=name + (", where measured" if source != "ood" else ""))
               for source, (name, color) in OOD_SOURCES.items() if source in measured]
    handles.append(matplotlib.lines.Line2D([], [], color="black", linestyle="--", linewidth=1,
                                           label="goal: agreement 97%, AUC 0.97"))
    figure.legend(handles=handles, loc="outside upper center", ncol=len(handles), fontsize=9, frameon=False)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def outputs(out):
    """The files a run with --out=``out`` writes: {"json", "md", "png", "ood_png"}: paths."""
    out = pathlib.Path(out)
    return {"json": out.with_suffix(".json"), "md": out.with_suffix(".md"), "png": out.with_suffix(".png"),
            "ood_png": out.parent / f"{out.name}_ood.png"}


def write_results(runs, configs, run):
    paths = outputs(FLAGS.out)
    rows = aggregate(runs)
    record = run.record()
    paths["json"].write_text(json.dumps(
        {"provenance": record, "config": dict(configs), "rows": rows, "runs": runs}, indent=1))
    paths["md"].write_text(markdown(rows, configs, record))
    plot(rows, paths["png"])
    plot_ood(rows, paths["ood_png"])
    return paths["md"]


def replot(out):
    """--replot: draws <out>.png and <out>_ood.png again from the rows of <out>.json, which it only reads (the
    .md stays too); returns the paths written (no _ood.png where no row has out-of-scene measures)."""
    paths = outputs(out)
    rows = json.loads(paths["json"].read_text())["rows"]
    plot(rows, paths["png"])
    plot_ood(rows, paths["ood_png"])
    return [paths["png"]] + ([paths["ood_png"]] if any("ood_agreement" in row for row in rows) else [])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.replot:
        for path in replot(FLAGS.out):
            print(f"wrote {path}")
        return
    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    run = provenance.Run()
    configs = [(name, dataset_config(name)[1]) for name in FLAGS.datasets]
    out = pathlib.Path(FLAGS.out)
    partial = Partial(out, {"flags": {name: FLAGS[name].value for name in sorted(FLAGS) if name in (
        "datasets", "rows", "seeds", "seeds_8bit", "teacher", "person_epochs", "distill_temperature", "distill_weight",
        "fmnist_float_epochs", "fmnist_epochs", "fmnist_batch", "mixed_bits", "deterministic", "quick")}})

    def progress():  # the results so far, after every seed
        done = {r["dataset"] for r in partial.runs}
        return write_results(partial.runs, [config for config in configs if config[0] in done], run)

    for name in FLAGS.datasets:
        run_dataset(name, partial, progress)
    written = progress()
    partial.remove()
    print(written.read_text())


if __name__ == "__main__":
    app.run(main)
