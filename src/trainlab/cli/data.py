"""Commands on what a run would meet: `data info` (a data set) and `bench-device` (the devices).

The library is imported inside the handlers: it imports torch, and every command's `--help`
answers without it.
"""

from __future__ import annotations

from trainlab.cli.args import Parser, add_allow_import, positive_int
from trainlab.text import printable


def cmd_data_info(args) -> int:
    import torch

    from trainlab.analysis.tables import table
    from trainlab.data import load_dataset, measure_mean_std

    data = load_dataset(args.dataset, args.data_dir, image_size=args.image_size, skip_bad=True)
    print(f"dataset  {printable(data.name)}")
    print(printable(f"source   {data.source.get('kind')}: {data.source.get('path')} {data.source.get('detail', '')}".rstrip()))
    print(f"shape    {tuple(data.input_shape)} images, {data.num_classes} classes, "
          f"{len(data.train_y)} train / {len(data.test_y)} test, dtype {data.train_x.dtype}")
    print(f"test     {data.test_split}")
    mean, std = measure_mean_std(data.train_x, data.scale)
    print(f"train    mean {mean} std {std} (measured; catalog: mean {data.mean} std {data.std})")
    tc = torch.bincount(data.train_y, minlength=data.num_classes).tolist()
    sc = torch.bincount(data.test_y, minlength=data.num_classes).tolist()
    print(table(["label", "class", "train", "test"],
                [[i, c, tc[i], sc[i]] for i, c in enumerate(data.classes)]))
    src = data.source
    if "modes" in src:  # an image folder: what the files are, and what was converted or left out
        print(f"files    modes {', '.join(f'{m} {n}' for m, n in src['modes'].items())}; sizes "
              f"{', '.join(f'{s} {n}' for s, n in list(src['sizes'].items())[:5])}"
              f"{' ...' if len(src['sizes']) > 5 else ''}; {src.get('ignored', 0)} other files ignored")
        if src.get("val_given"):
            print(f"val      the {src['val_given']} images in val/ (counted under train above): the "
                  "runs validate on them, val_size is not used")
        if "test_carved" in src:
            print(f"test     carved: {src['test_carved']['fraction']:.0%} of each class, seed "
                  f"{src['test_carved']['seed']} ({len(src['test_carved']['files'])} files)")
        bad = src.get("bad") or []
        print(f"bad      {src.get('skipped_bad', 0)} file(s) cannot be decoded (training stops on them "
              "unless --skip-bad)" if bad else "bad      none")
        for rel, why in bad[:10]:
            print(f"  {printable(rel)}: {printable(why)}")
    print("sha256 of decoded payloads:")
    for split, h in data.hashes.items():
        print(f"  {split:<13} {h}")
    return 0


def cmd_bench_device(args) -> int:
    from trainlab.analysis.bench_device import run
    from trainlab.analysis.tables import table

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    timings, advice, params = run(args.model, args.batch_size, args.steps)
    print(f"model {args.model} ({params:,} parameters), batch size {args.batch_size}, {args.steps} timed steps")
    print(table(["device", "way", "ms/step", "samples/s", "of which copy ms"],
                [[t.device, t.way, f"{t.ms_per_step:.2f}", f"{args.batch_size * 1000 / t.ms_per_step:,.0f}",
                  f"{t.transfer_ms:.2f}" if t.way == "textbook" else "-"] for t in timings]))
    print(advice)
    return 0


# ---------------------------------------------------------------- registration

def add_commands(sub) -> None:
    b = sub.add_parser("bench-device", help="time training steps per device: does the GPU help?")
    b.add_argument("--model", default="cnn")
    b.add_argument("--batch-size", type=positive_int, default=256)
    b.add_argument("--steps", type=positive_int, default=30)
    b.add_argument("--threads", type=positive_int)
    b.set_defaults(func=cmd_bench_device)

    d = sub.add_parser("data", help="data set commands")
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    di = dsub.add_parser("info", help="source, files, shapes, class counts, mean/std, hashes")
    di.add_argument("--dataset", default="fashion-mnist")
    di.add_argument("--data-dir")
    di.add_argument("--image-size", type=positive_int, help="folder: images: the size policy to show (see train)")
    add_allow_import(di)
    di.set_defaults(func=cmd_data_info)
