"""``moco data``: datasets in the seed format (write the digits, validate a dataset, prepare a store)."""

from __future__ import annotations

import argparse

from .codes import EXIT_OK
from .options import add_ray_address, add_splits, label_columns_of


def add_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="datasets in the seed format").add_subparsers(
        dest="data_cmd", required=True
    )
    p = data.add_parser(
        "digits", help="write scikit-learn's digits (real handwritten digits) in the seed layout"
    )
    p.add_argument("out", metavar="OUT", help="output folder (created)")
    p.add_argument("--image-size", type=int, default=32, help="side of the written PNGs (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split")
    p.set_defaults(func=cmd_digits)
    p = data.add_parser(
        "validate", help="check a dataset: every CSV row, file and image; exit 1 on any fault"
    )
    p.add_argument("root", metavar="ROOT", help="dataset root (holds train/, val/, test/)")
    add_splits(p)
    p.add_argument("--no-decode", action="store_true", help="check files exist without decoding images")
    p.set_defaults(func=cmd_validate)
    p = data.add_parser(
        "index",
        help="write the train/val/test CSVs for a folder tree of images (class folders give a label)",
        description="Index the images under FOLDER (left as it is) into the seed layout at ROOT: "
        "ROOT/train, ROOT/val and ROOT/test link to FOLDER, and each CSV lists its share of the images. "
        "Class folders (images only under first-level folders) give a `label` column; the split is "
        "seeded and stratified by class.",
    )
    p.add_argument("folder", metavar="FOLDER", help="the folder tree of images")
    p.add_argument("--out", required=True, metavar="ROOT", help="the dataset root to write (outside FOLDER)")
    p.add_argument("--val", type=float, default=0.1, help="fraction of the images in val (default 0.1)")
    p.add_argument("--test", type=float, default=0.1, help="fraction of the images in test (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument(
        "--no-labels",
        action="store_true",
        help="no label column, even when the first-level folders look like classes",
    )
    p.set_defaults(func=cmd_index)
    p = data.add_parser(
        "prepare",
        help="decode every image once into a store that training and evaluation read with bounded memory",
        description="Decode every image of every partition once (on the Ray cluster, one task per shard), "
        "resized to S x S (squashed; the original size is kept and crops are drawn in it), into uint8 "
        "shards plus an index. A stopped prepare continues where it stopped. Use it with "
        "--set data.store=STORE (or data.prepare: auto in the experiment file).",
    )
    p.add_argument("root", metavar="ROOT", help="dataset root (holds train/, val/, test/)")
    add_splits(p)
    p.add_argument(
        "--out",
        required=True,
        metavar="STORE",
        help="the store: a folder (created), or s3://BUCKET/PREFIX (any pyarrow.fs URI; credentials and "
        "AWS_ENDPOINT_URL from the environment, never in the URI): each Ray task uploads its shard",
    )
    p.add_argument(
        "--image-size", type=int, default=224, help="the data.image_size the store is for (default 224)"
    )
    p.add_argument(
        "--size",
        type=int,
        default=None,
        metavar="S",
        help="stored side in pixels (default: the image size up to 64 px, else 8/7 of it: 256 for 224)",
    )
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="data.channels (default 3)")
    p.add_argument(
        "--shard-mb", type=float, default=64, help="about this many MB per shard file (default 64)"
    )
    add_ray_address(p)
    p.set_defaults(func=cmd_prepare)


def cmd_digits(args: argparse.Namespace) -> int:
    from moco_core.digits import write_digits

    counts = write_digits(args.out, image_size=args.image_size, seed=args.seed)
    print(f"wrote scikit-learn's digits to {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    from moco_core.data import validate_dataset

    cols = label_columns_of(args)
    report = validate_dataset(args.root, args.splits_dir, cols, decode=not args.no_decode)
    if not report.ok:  # every fault, as any command's error: on stderr, exit 1
        raise report.error()
    print(report.format())
    return EXIT_OK


def cmd_index(args: argparse.Namespace) -> int:
    from moco_core.data.index import index_folder

    index = index_folder(args.folder, args.out, args.val, args.test, args.seed, not args.no_labels)
    counts = ", ".join(f"{n} {c}" for n, c in index.counts.items())
    labels = f"label: {len(index.classes)} classes from the folder names" if index.classes else "no labels"
    print(f"indexed {args.folder} at {args.out}: {counts} images; {labels}")
    if index.empty_classes:
        print(f"warning: class folder(s) without an image, left out: {', '.join(index.empty_classes)}")
    print(f"next: moco data validate {args.out}, then moco pretrain FILE --set data.root={args.out}")
    return EXIT_OK


def cmd_prepare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from moco_core.store import default_store_size

    from ..prepare import dataset_source, prepare_store, read_all
    from ..progress import say

    cols = label_columns_of(args)
    root = str(Path(args.root).expanduser().resolve())
    splits = str(Path(args.splits_dir).expanduser().resolve()) if args.splits_dir else None
    parts = read_all(root, splits, cols)
    size = args.size or default_store_size(args.image_size)
    source = dataset_source(root, splits, cols)
    shard_bytes = max(1, int(args.shard_mb * (1 << 20)))
    index = prepare_store(parts, args.out, size, args.channels, source, say, args.ray_address, shard_bytes)
    counts = ", ".join(f"{n} {p['images']}" for n, p in index["partitions"].items())
    print(f"store {args.out}: {counts} images at {size} px; train with --set data.store={args.out}")
    return EXIT_OK
