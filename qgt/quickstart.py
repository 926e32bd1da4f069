"""qgt-quickstart: the main job on the bundled data. QGT training of a MobileNetV1-0.25 on person96, the
bottleneck report, the export to TFLite-Micro (int8, LUT and bit-packed variants, C sources) and its size
report, and the exported model as generated C on the emulated Cortex-M4.

Trains the same network twice from the same initialization, once plainly and once with QGT (one float
epoch, then the QGT strength ramps up over the QGT phase; the last --hard_epochs on the grid), with the
default policy (first and last layer at 8 bits, the rest at --bits). Prints the bottleneck report of the QGT
model at the end of its QGT phase, measured on a slice of the training data; snaps both models to their
grids, re-estimates the BatchNorm statistics and prints the test accuracy of each before and after; exports
the QGT model with tflm_export, calibrated on training images (verified bit-exact in the TFLite-Micro
runtime) and prints the size report; last, runs the generated C model on qemu's Cortex-M4 (DSP path) for two
real images (TFLM's person.bmp and no_person.bmp from ../shared/datasets/tflm_testdata when present, else two
person96 test crops), read by the training pipeline at the model's size and color, and prints their person
scores, the instructions of one inference, flash and RAM (skipped with a message without arm-none-eabi-gcc or
qemu-system-arm). Writes the QGT model (.keras), its history, the report (JSON, markdown), the accuracies and
export/ to --out_dir.
"""

import json
import pathlib
import sys
import tempfile
import time

from qgt import cli

BATCH = 32
REPORT_IMAGES = 256  # training images the bottleneck report is measured on
NAME = "person_qgt"
TFLM_TESTDATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "tflm_testdata"
# person.bmp stores the int8 model input as raw bytes, no_person.bmp ordinary pixels (../shared/ANCHORS.md)
TFLM_IMAGES = {"person.bmp": 0x80, "no_person.bmp": 0x00}  # byte ^ this = pixel value


def build_parser():
    parser = cli.parser("qgt-quickstart", __doc__)
    cli.add_out_dir(parser, "Where the model, history, report and export go.", default="runs/quickstart")
    parser.add_argument("--epochs", type=int, default=8, help="Training epochs of each model (at least 2).")
    cli.add_bits(parser, 2, "Weight width of every layer but the first and last (8 bits)")
    cli.add_layer_bits(parser, "Per-layer widths that replace those, e.g. pw13=4.")
    parser.add_argument("--architecture", default="mobilenet_v1",
                        help="Model builder of qgt_keras.models.MODELS (alpha 0.25 where it has one).")
    parser.add_argument("--image_size", type=int, default=48, help="Images are resized to image_size x image_size.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of initialization and shuffling.")
    parser.add_argument("--start_strength", type=float,
                        help="QGT strength at the ramp start (default: QGTScheduler's).")
    parser.add_argument("--end_strength", type=float, help="QGT strength at the end of the ramp, the end of the QGT "
                        "phase (default: QGTScheduler's).")
    parser.add_argument("--hard_epochs", type=int, default=2, help="Last epochs trained with hard (STE) quantization.")
    return parser


def check_flags(args):
    """What can be checked before TensorFlow loads. Creates --out_dir."""
    if args.epochs < 2 or args.hard_epochs < 0 or args.image_size < 16:
        raise ValueError("need --epochs >= 2, --hard_epochs >= 0 and --image_size >= 16")
    cli.check_out_file_folder(args.out_dir)


def _demo_images(folder, root, size):
    """(names, float images): two real images shaped and colored like the model input, read by the pipeline."""
    import numpy as np
    from PIL import Image

    from qgt_keras import datasets

    images = pathlib.Path(folder) / "images" / "any"
    images.mkdir(parents=True)
    if all((TFLM_TESTDATA / name).is_file() for name in TFLM_IMAGES):
        for name, flip in TFLM_IMAGES.items():
            pixels = np.asarray(Image.open(TFLM_TESTDATA / name).convert("L")) ^ np.uint8(flip)
            Image.fromarray(pixels).save(images / (pathlib.Path(name).stem + ".png"))
    else:
        for label in ("person", "non_person"):
            crop = sorted((root / "test" / label).glob("*.jpg"))[0]
            (images / crop.name).write_bytes(crop.read_bytes())
    dataset, _ = datasets.read_image_folder(images.parent, image_size=size, batch_size=2)
    return sorted(p.name for p in images.iterdir()), next(iter(dataset))[0].numpy()


def _cortex_m4_run(export_dir, root, size):
    """The exported model's generated C on the emulated Cortex-M4 for two real images: prints and returns
    their person scores, instructions, flash and RAM (None without the toolchain)."""
    import numpy as np

    from tflm_export import c_model, codegen, export, toolchain, verify

    int8 = (export_dir / f"{NAME}_int8.tflite").read_bytes()
    generated = codegen.generate((export_dir / f"{NAME}_packed.tflite").read_bytes(), f"{NAME}_model",
                                 export.pixel_table(int8))
    with tempfile.TemporaryDirectory() as folder:
        names, images = _demo_images(folder, root, size)
        inputs = verify.quantize_inputs(int8, images)
        try:
            run = c_model.cortex_m4_run(generated, inputs, folder)
        except toolchain.ToolchainMissing as error:
            print(f"skipped: {error}")
            return None
    same = bool(np.array_equal(run["outputs"], verify.run_tflm(int8, inputs)[0].reshape(len(inputs), -1)))
    output = generated.output
    scores = (run["outputs"][:, codegen.PERSON_INDEX].astype(np.float64) - output.zero_point) * output.scale
    for name, score in zip(names, scores):
        print(f"{name:16s} person score {score:.3f}")
    print(f"output bytes {'equal' if same else 'DIFFER from'} TFLite-Micro's on the int8 model")
    print(f"one inference: {run['instructions']:,} instructions; flash {run['firmware_flash_bytes']:,} B (kernels and "
          f"generated code) + {run['model_data_flash_bytes']:,} B of model constants; RAM {run['ram_bytes']:,} B "
          f"(buffer {generated.buffer_bytes:,} B + stack {run['stack_bytes']} B)")
    return {"images": [{"image": n, "person_score": float(s)} for n, s in zip(names, scores)],
            "outputs_equal_tflite_micro": same, **{key: run[key] for key in (
                "instructions", "firmware_flash_bytes", "model_data_flash_bytes", "ram_bytes", "stack_bytes")}}


def _run(args):
    check_flags(args)
    cli.quiet_tensorflow()
    import numpy as np
    import tf_keras as keras

    from qgt_keras import conversion, datasets, models, report
    from qgt_keras.callbacks import QGTMonitor, QGTScheduler
    from tflm_export import export

    def arrays(dataset):
        return tuple(np.concatenate(parts) for parts in zip(*((x.numpy(), y.numpy()) for x, y in dataset)))

    def accuracy(model, x, y):
        return report.evaluate_batch(model, x, y, keras.losses.SparseCategoricalCrossentropy())[1]

    def snap_and_recalibrate(model):
        """Accuracy-relevant end of training: weights onto the grid, BatchNorm statistics re-estimated."""
        conversion.set_hard_quantization(model, False)
        conversion.snap_weights(model)
        conversion.recalibrate_batchnorm(model, calibration)

    out_dir = pathlib.Path(args.out_dir)
    root = datasets.bundled_person96_dir()
    size = (args.image_size, args.image_size)
    train, info = datasets.read_image_folder(
        root / "train", image_size=size, batch_size=BATCH, shuffle=True, seed=args.seed)
    calibration = datasets.read_image_folder(root / "train", image_size=size, batch_size=128, validate=False)[0]
    held_out = arrays(datasets.read_image_folder(root / "train", image_size=size, batch_size=REPORT_IMAGES,
                                                 limit=REPORT_IMAGES, seed=args.seed + 1, validate=False)[0])
    x_test, y_test = arrays(datasets.read_image_folder(root / "test", image_size=size, batch_size=256)[0])
    steps = -(-info.num_examples // BATCH)
    print(f"person96: {info.num_examples} training images, {len(y_test)} test images, {size[0]}x{size[1]} RGB")

    keras.utils.set_random_seed(args.seed)
    options = {} if args.architecture == "small_cnn" else {"alpha": 0.25}
    plain = models.build_model(args.architecture, input_shape=size + (3,), bn_momentum=0.9, **options)
    qgt = conversion.quantize_model(plain, bits=args.bits, overrides=args.layer_bits)  # same initial weights

    print(f"\n[1/5] plain training, {args.epochs} epochs")
    plain.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.time()
    plain.fit(train, epochs=args.epochs, verbose=2)
    plain_seconds = time.time() - started

    qgt_epochs = max(2, args.epochs - args.hard_epochs)
    strengths = {name: getattr(args, name) for name in ("start_strength", "end_strength")
                 if getattr(args, name) is not None}
    schedule = QGTScheduler(warmup_steps=steps, ramp_steps=(qgt_epochs - 1) * steps,  # full strength at the end
                            **strengths)
    print(f"\n[2/5] QGT training, {qgt_epochs} epochs: 1 float, {qgt_epochs - 1} with the strength ramping from "
          f"{schedule.start_strength:g} to {schedule.end_strength:g}")
    qgt.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.time()
    history = qgt.fit(train, epochs=qgt_epochs, verbose=2, callbacks=[schedule, QGTMonitor()]).history
    qgt_seconds = time.time() - started

    print(f"\n[3/5] bottleneck report of the QGT model ({REPORT_IMAGES} training images), then "
          f"{args.epochs - qgt_epochs} hard-quantized epochs, {args.bits}-bit snapping")
    bottlenecks = report.summary(qgt, held_out)
    qgt_float = accuracy(qgt, x_test, y_test)
    if args.epochs > qgt_epochs:  # on the grid (STE), the data loss alone adapts the network to it
        started = time.time()
        hard = qgt.fit(train, initial_epoch=qgt_epochs, epochs=args.epochs, verbose=2, callbacks=[
            QGTScheduler(hard_quantization_epochs=args.epochs - qgt_epochs)])
        history = {key: history.get(key, []) + hard.history.get(key, []) for key in history}
        qgt_seconds += time.time() - started
    plain_float = accuracy(plain, x_test, y_test)
    plain = conversion.quantize_model(plain, bits=args.bits, overrides=args.layer_bits)
    snap_and_recalibrate(plain)
    plain_snapped = accuracy(plain, x_test, y_test)
    snap_and_recalibrate(qgt)
    qgt_snapped = accuracy(qgt, x_test, y_test)
    results = {
        "bits": args.bits,
        "plain": {"float_accuracy": plain_float, "snapped_accuracy": plain_snapped,
                  "train_seconds": plain_seconds},
        "qgt": {"float_accuracy": qgt_float, "snapped_accuracy": qgt_snapped, "train_seconds": qgt_seconds},
        "packed_weight_bytes": bottlenecks.packed_bytes,
        "float_weight_bytes": bottlenecks.float_bytes,
    }
    qgt.save(out_dir / "qgt_model.keras")
    (out_dir / "history.json").write_text(json.dumps(history, indent=2, default=float))
    (out_dir / "report.json").write_text(bottlenecks.to_json())
    (out_dir / "report.md").write_text(bottlenecks.to_markdown())
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\ntest accuracy            float forward   {args.bits}-bit (snapped, BatchNorm re-estimated)")
    print(f"plain training           {100 * plain_float:5.1f}%          {100 * plain_snapped:5.1f}%")
    print(f"QGT (end of QGT phase)   {100 * qgt_float:5.1f}%          {100 * qgt_snapped:5.1f}%")

    print("\n[4/5] export to TFLite-Micro (calibrated on training images)")
    size_report = export.export(str(out_dir / "qgt_model.keras"), str(out_dir / "export"),
                                calibration=str(root / "train"), name=NAME)
    print(export.markdown_report(size_report))

    print("\n[5/5] the exported model as generated C on the emulated Cortex-M4 (qemu mps2-an386, DSP path)")
    results["cortex_m4"] = _cortex_m4_run(out_dir / "export", root, size)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out_dir}/: qgt_model.keras, history.json, report.json, report.md, results.json, export/")


def main(argv=None):
    """The command line (the console script's entry point): its exit code."""
    return cli.main(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
