"""``moco embed``: an encoder's features of every image, via Ray Data, in a Parquet file (see
:mod:`service.embed`)."""

from __future__ import annotations

import argparse
import sys

from .codes import EXIT_OK
from .options import add_ray_address, add_splits, add_tracking_uri, label_columns_of

PARTITION_CHOICES = ("train", "val", "test", "all")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="an encoder's features of every image, via Ray Data, into a Parquet file",
        description="Compute an encoder's features of every image of a dataset (seed format) with Ray "
        "Data (GPU actors when the cluster has GPUs, CPU actors otherwise) and write one Parquet file: "
        "Path, partition, row (the CSV line), the label columns and feature (a fixed-size list of "
        "float32), in partition then CSV order; pandas, pyarrow and Ray Data read it. The features are "
        "those of service.registry.load_encoder(REF) and its .preprocess.",
    )
    p.add_argument(
        "ref",
        metavar="REF",
        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID, a run id, or an encoder folder",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="ROOT",
        help="dataset root (holds train/, val/, test/); may be left out with --store: the partitions are "
        "then the store's copies of the CSVs",
    )
    add_splits(p)
    p.add_argument(
        "--store",
        default=None,
        metavar="STORE",
        help="read the images from this prepared store (moco data prepare): a folder or s3://BUCKET/PREFIX",
    )
    p.add_argument(
        "--partition",
        choices=PARTITION_CHOICES,
        default="all",
        help="the partition to embed (default: all, every partition that has a CSV)",
    )
    p.add_argument("--out", required=True, metavar="FILE.parquet", help="the Parquet file to write")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="images per batch (default 256)")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out images that cannot be read (listed on stderr) instead of failing",
    )
    p.add_argument(
        "--neighbours",
        type=int,
        default=0,
        metavar="K",
        help="also write each image's K nearest neighbours by cosine in the same file (columns neighbours: "
        "their row indices in the file, and neighbour_cosine, most similar first; itself excluded)",
    )
    add_tracking_uri(p)
    add_ray_address(p)
    p.set_defaults(func=cmd_embed)


def cmd_embed(args: argparse.Namespace) -> int:
    from ..embed import embed

    result = embed(
        args.ref,
        args.data,
        args.out,
        splits_dir=args.splits_dir,
        label_columns=label_columns_of(args),
        store=args.store,
        partition=args.partition,
        batch_size=args.batch_size,
        skip_bad=args.skip_bad,
        neighbours=args.neighbours,
        address=args.ray_address,
    )
    if result.skipped:
        print(f"left out {len(result.skipped)} unreadable image(s) (--skip-bad):", file=sys.stderr)
        for fault in result.skipped:
            print(f"  {fault}", file=sys.stderr)
    print(
        f"wrote {result.rows} rows x {result.feature_dim} features to {result.out} in {result.seconds:.0f} s"
    )
    return EXIT_OK
