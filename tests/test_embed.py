"""``moco embed`` end to end through Ray Data on the session's local cluster: a few dozen digits, an
encoder folder written by the package writer, the Parquet file read back by pandas, pyarrow and Ray
Data, and the features compared with ``load_encoder``'s."""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from moco_core.backbones import create_backbone
from moco_core.config import ExperimentConfig
from moco_core.data import PARTITIONS, load_image
from service.cli import EXIT_FAIL, EXIT_OK, main
from service.registry import load_encoder, write_encoder_package

PER_PARTITION = {"train": 24, "val": 16, "test": 16}
K = 3


def mini_digits(src: Path, dst: Path) -> Path:
    """The first rows of each partition of the digits at ``src``, files copied (so they can be broken)."""
    for name in PARTITIONS:
        with open(src / f"{name}.csv", newline="") as fh:
            header, *rows = list(csv.reader(fh))
        rows = rows[: PER_PARTITION[name]]
        for path, _ in rows:
            (dst / name / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name / path, dst / name / path)
        with open(dst / f"{name}.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([header, *rows])
    return dst


def encoder_folder(out: Path) -> Path:
    """A package of a seeded resnet18 for 16-pixel gray images, with BN statistics of its own."""
    torch.manual_seed(0)
    net = create_backbone("resnet18", 1, True).train()
    with torch.no_grad():
        net(torch.randn(8, 1, 16, 16) * 2 + 0.5)
    cfg = ExperimentConfig(name="tiny", data={"channels": 1, "image_size": 16}, model={"arch": "resnet18"})
    return write_encoder_package(out, net.eval(), cfg, fingerprint="sha256:test", run_id=None, metrics={})


def embed(*args: str) -> tuple[int, str, str]:
    """``moco embed ARGS``: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["embed", *args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def embedded(ray_cluster, digits_root, tmp_path_factory):
    """Every partition of the mini digits embedded, with 3 neighbours each."""
    tmp = tmp_path_factory.mktemp("embed")
    root = mini_digits(digits_root, tmp / "digits")
    enc = encoder_folder(tmp / "encoder")
    out = tmp / "out" / "digits.parquet"
    code, stdout, stderr = embed(str(enc), "--data", str(root), "--out", str(out), "--neighbours", str(K))
    assert code == EXIT_OK, stderr
    return SimpleNamespace(root=root, enc=enc, out=out, stdout=stdout, stderr=stderr, tmp=tmp)


@pytest.mark.timeout(120)
def test_every_image_is_written_in_order_and_read_back(embedded):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray.data

    n = sum(PER_PARTITION.values())
    table = pq.read_table(embedded.out)
    assert table.num_rows == n
    assert table.column_names == [
        "Path",
        "partition",
        "row",
        "digit",
        "feature",
        "neighbours",
        "neighbour_cosine",
    ]
    assert table.schema.field("feature").type == pa.list_(pa.float32(), 512)
    df = pd.read_parquet(embedded.out)
    assert list(df["partition"]) == [p for p in PARTITIONS for _ in range(PER_PARTITION[p])]
    for name in PARTITIONS:  # CSV order, the CSV's line numbers and labels
        with open(embedded.root / f"{name}.csv", newline="") as fh:
            rows = list(csv.reader(fh))[1:]
        part = df[df["partition"] == name]
        assert list(part["Path"]) == [r[0] for r in rows] and list(part["digit"]) == [int(r[1]) for r in rows]
        assert list(part["row"]) == list(range(2, len(rows) + 2))
    feats = np.stack(df["feature"].to_numpy())
    assert feats.shape == (n, 512) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert ray.data.read_parquet(str(embedded.out)).count() == n
    assert f"wrote {n} rows x 512 features to {embedded.out}" in embedded.stdout
    assert f"{n}/{n} images in" in embedded.stderr and "images/s" in embedded.stderr


@pytest.mark.timeout(60)
def test_features_are_those_of_load_encoder(embedded):
    import pandas as pd

    df = pd.read_parquet(embedded.out)
    enc = load_encoder(str(embedded.enc))
    for i in (0, 30, len(df) - 1):  # one image of each partition
        image = load_image(embedded.root / df["partition"][i] / df["Path"][i], 1)
        with torch.no_grad():
            expected = enc(enc.preprocess(image)[None])[0]  # D
        assert torch.allclose(torch.from_numpy(df["feature"][i].copy()), expected, atol=1e-4)


@pytest.mark.timeout(60)
def test_neighbours_are_the_nearest_others_by_cosine(embedded):
    import pandas as pd

    df = pd.read_parquet(embedded.out)
    feats = torch.nn.functional.normalize(torch.from_numpy(np.stack(df["feature"].to_numpy())), dim=1)
    cos = feats @ feats.T  # N x N (small here; the command computes it in chunks)
    cos.fill_diagonal_(-2)
    ids, sims = np.stack(df["neighbours"].to_numpy()), np.stack(df["neighbour_cosine"].to_numpy())
    assert ids.shape == sims.shape == (len(df), K)
    assert not (ids == np.arange(len(df))[:, None]).any()  # never itself
    assert (np.diff(sims, axis=1) <= 1e-6).all()  # most similar first
    np.testing.assert_allclose(sims, cos.topk(K, dim=1).values.numpy(), atol=1e-5)
    np.testing.assert_allclose(sims, np.take_along_axis(cos.numpy(), ids, axis=1), atol=1e-5)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "ref, message",
    [
        ("models:/moco-nope@champion", "no registered model named 'moco-nope'"),
        ("no-such-encoder", "'no-such-encoder' is not an encoder reference"),
    ],
    ids=["unknown-model", "not-a-ref"],
)
def test_an_unknown_ref_is_one_line_before_ray(digits_root, tmp_path, ref, message):
    from service import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking.client(uri).search_experiments()  # an MLflow store that exists, with no such model in it
    out = tmp_path / "x.parquet"
    code, stdout, stderr = embed(ref, "--data", str(digits_root), "--out", str(out), "--tracking-uri", uri)
    assert code == EXIT_FAIL and stdout == ""
    assert stderr.startswith("error: ") and message in stderr and stderr.count("\n") == 1, stderr
    assert not out.exists()


@pytest.fixture(scope="module")
def broken(embedded):
    """A copy of the mini digits whose 5th val image is cut in half (a real truncated PNG)."""
    root = mini_digits(embedded.root, embedded.tmp / "broken")
    with open(root / "val.csv", newline="") as fh:
        rel = list(csv.reader(fh))[5][0]  # CSV line 6
    png = root / "val" / rel
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    return SimpleNamespace(root=root, shown=f"val.csv line 6 (val/{rel})")


@pytest.mark.timeout(120)
def test_an_unreadable_image_is_named_and_nothing_is_written(embedded, broken, tmp_path):
    out = tmp_path / "val.parquet"
    code, _, stderr = embed(
        str(embedded.enc), "--data", str(broken.root), "--partition", "val", "--out", str(out)
    )
    assert code == EXIT_FAIL
    assert broken.shown in stderr and "cannot decode image" in stderr and "--skip-bad" in stderr, stderr
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


@pytest.mark.timeout(120)
def test_skip_bad_leaves_the_image_out_and_lists_it(embedded, broken, tmp_path):
    import pandas as pd

    out = tmp_path / "val.parquet"
    code, stdout, stderr = embed(
        str(embedded.enc), "--data", str(broken.root), "--partition", "val", "--out", str(out), "--skip-bad"
    )
    assert code == EXIT_OK, stderr
    assert "left out 1 unreadable image(s)" in stderr and broken.shown in stderr
    df = pd.read_parquet(out)
    assert len(df) == PER_PARTITION["val"] - 1 and 6 not in set(df["row"])
    assert f"wrote {len(df)} rows" in stdout


@pytest.mark.timeout(30)
def test_embed_is_a_command_with_the_shared_options():
    from service.cli import build_parser

    args = build_parser().parse_args(
        [
            "embed",
            "REF",
            "--data",
            "d",
            "--out",
            "f.parquet",
            "--tracking-uri",
            "http://m:5000",
            "--ray-address",
            "auto",
        ]
    )
    assert (args.tracking_uri, args.ray_address, args.partition, args.neighbours) == (
        "http://m:5000",
        "auto",
        "all",
        0,
    )


@pytest.mark.timeout(180)
def test_a_store_alone_is_enough_and_gives_the_same_features(embedded):
    """``--store`` without ``--data`` (a store on object storage, no dataset here): the store's own
    partitions, the same rows and, from the same pixels, the same features."""
    import pyarrow.parquet as pq

    from moco_core.data import read_dataset
    from moco_core.store import prepare_here

    store = embedded.tmp / "store"
    prepare_here(store, read_dataset(embedded.root), 16, 1, {"root": str(embedded.root)})
    out = embedded.tmp / "from_store.parquet"
    code, _, stderr = embed(str(embedded.enc), "--store", str(store), "--partition", "val", "--out", str(out))
    assert code == EXIT_OK, stderr
    got = pq.read_table(out).to_pandas()
    want = pq.read_table(embedded.out).to_pandas().query("partition == 'val'").reset_index(drop=True)
    assert got["Path"].tolist() == want["Path"].tolist() and got["row"].tolist() == want["row"].tolist()
    assert np.allclose(np.stack(got["feature"]), np.stack(want["feature"]), atol=1e-5)
