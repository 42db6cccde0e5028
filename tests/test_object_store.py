"""A store on object storage: prepared by Ray tasks that upload their shards, read by every node
through a bounded local cache without the dataset or a shared file system, evaluated from there; a
missing bucket, an unreachable server and credentials in a URI said in one line before any work."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time

import numpy as np
import pytest

from moco_core.data import dataset_fingerprint, read_dataset
from moco_core.store import StoreError, StoreImages, prepare_here, read_index, store_partitions
from moco_core.store.cache import BlockCache
from service.cli import main
from service.cli.codes import EXIT_FAIL, EXIT_OK

from .test_store import SOURCE, _mount_tmpfs, xray_dataset

BUCKET = "moco-test"


def _bucket(name: str = BUCKET) -> str:
    import pyarrow.fs

    s3 = pyarrow.fs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
    s3.create_dir(name)
    return f"s3://{name}"


@pytest.mark.timeout(120)
def test_a_store_read_through_a_uri_and_a_bounded_cache_gives_the_local_pixels(tmp_path, digits_root):
    parts = read_dataset(digits_root)
    prepare_here(tmp_path / "s", parts, 24, 3, SOURCE, shard_bytes=100 * 3 * 24 * 24)  # 100 a shard
    train = parts["train"]
    here = StoreImages(tmp_path / "s", train)
    block = 100 * 3 * 24 * 24  # a block is a whole shard here (shards are smaller than a block)
    cache = BlockCache(tmp_path / "cache", 3 * block)
    readers = {
        "cached": StoreImages(f"file://{tmp_path / 's'}", train, cache),
        "ranged": StoreImages(f"file://{tmp_path / 's'}", train),  # no cache: a ranged read per image
        "cache smaller than an image": StoreImages(
            f"file://{tmp_path / 's'}", train, BlockCache(tmp_path / "tiny", 3 * 24 * 24 - 1)
        ),
    }
    order = list(range(len(train)))
    random.Random(0).shuffle(order)
    for i in order[:400]:
        want = here.item(i)
        for name, reader in readers.items():
            got = reader.item(i)
            assert np.array_equal(got[0], want[0]) and got[1] == want[1], (name, i)
        assert cache.used() <= 3 * block  # evicting, never more than the bound at rest
    assert len(os.listdir(tmp_path / "cache")) == 3
    assert not (tmp_path / "tiny").exists() or not os.listdir(tmp_path / "tiny")


def test_the_cache_evicts_the_least_recently_used_block_and_reads_once(tmp_path):
    cache = BlockCache(tmp_path / "c", 2000)
    fetched: list[str] = []

    def fetch(key: str):
        return lambda: fetched.append(key) or bytes([ord(key)]) * 1000

    t = time.time()
    for k, key in enumerate("ab"):
        assert cache.read(key, 10, 3, fetch(key)) == key.encode() * 3
        os.utime(tmp_path / "c" / key, (t - 100 + k, t - 100 + k))
    assert cache.read("a", 0, 1, fetch("a")) == b"a"  # from the cache, and now the most recently used
    cache.read("c", 0, 1, fetch("c"))
    assert fetched == ["a", "b", "c"] and sorted(os.listdir(tmp_path / "c")) == ["a", "c"]


def test_a_full_disk_under_the_cache_serves_from_memory(tmp_path, digits_root):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk test needs a real small disk")
    try:
        (disk / "ballast").write_bytes(b"\0" * ((1 << 20) - 4096))
        parts = read_dataset(digits_root, partitions=("train",))
        prepare_here(tmp_path / "s", parts, 24, 3, SOURCE, shard_bytes=300 * 3 * 24 * 24)
        here = StoreImages(tmp_path / "s", parts["train"])
        remote = StoreImages(f"file://{tmp_path / 's'}", parts["train"], BlockCache(disk / "c", 1 << 30))
        for i in range(0, len(here), 7):
            assert np.array_equal(remote.item(i)[0], here.item(i)[0])
        assert not [f for f in os.listdir(disk / "c") if f.startswith(".")]  # no half-written block
    finally:
        subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.timeout(400)
def test_a_store_on_s3_is_prepared_on_ray_read_by_two_workers_and_evaluated(
    ray_cluster, s3_endpoint, tmp_path
):
    """The path of the mission's data: 16-bit PNGs in nested folders, CSVs apart -> moco data prepare
    --out s3:// (Ray tasks upload their shards) -> moco pretrain on 2 gloo workers with no dataset at
    all beside them (data.root is gone), through a cache smaller than the store -> moco evaluate
    --store s3:// without --data."""
    from service.pretrain import pretrain

    from .conftest import small_config

    store = f"{_bucket()}/cxr"
    splits = tmp_path / "splits"
    root = xray_dataset(tmp_path / "cxr", 48, size=64, splits_dir=splits)
    prepare = ["data", "prepare", str(root), "--splits-dir", str(splits), "--out", store]
    assert main([*prepare, "--image-size", "32", "--channels", "1", "--shard-mb", "0.01"]) == EXIT_OK
    index = read_index(store)
    assert len(index["partitions"]["train"]["shards"]) == 5  # 10 images a shard
    assert index["partitions"]["train"]["sizes"][0] == [64, 64]  # the original size, for the crops
    source = read_dataset(root, splits)
    assert index["partitions"]["train"]["fingerprint"] == dataset_fingerprint(source["train"])
    parts = store_partitions(store)
    assert {n: len(p) for n, p in parts.items()} == {"train": 48, "val": 12, "test": 12}
    assert parts["val"].targets.tolist() == source["val"].targets.tolist()

    cache = tmp_path / "cache"
    overrides = [f"data.store={store}", "data.image_size=32", "data.channels=1", f"data.store_cache={cache}"]
    overrides += ["data.store_cache_gb=0.00003", "scaling.workers=2", "optim.epochs=1"]  # ~3 shards
    overrides += ["optim.batch_size=16", "moco.queue_size=32", "eval.knn_label_fraction=1.0"]
    overrides += ["eval.knn_k=5", "tracking.register=false"]
    cfg = small_config(tmp_path / "gone", tmp_path, *overrides)  # no dataset here: the store only
    result = pretrain(cfg)
    assert "eval/knn_auroc" in result.metrics  # scored from the store's val images and labels
    assert 0 < sum(f.stat().st_size for f in cache.iterdir()) <= 0.00003 * (1 << 30)

    out = tmp_path / "report.json"
    args = ["evaluate", f"runs:/{result.mlflow_run_id}", "--store", store, "--protocol", "knn", "--no-track"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", cfg.tracking.uri)
        assert main([*args, "--out", str(out)]) == EXIT_OK
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["metric"] == "auroc" and 0.5 < row["encoder"]["value"] <= 1.0
    assert report["data"]["root"] == store and report["data"]["pretraining_data"] is True


@pytest.mark.timeout(120)
def test_a_missing_bucket_an_unreachable_server_and_credentials_in_the_uri_are_one_line(
    s3_endpoint, tmp_path, digits_root, capsys, monkeypatch
):
    from .conftest import small_config

    with pytest.raises(StoreError, match=r"bucket 'no-such-bucket' does not exist"):
        read_index("s3://no-such-bucket/store")
    cfg = small_config(digits_root, tmp_path, "data.store=s3://no-such-bucket/store")
    from service.pretrain import pretrain

    with pytest.raises(StoreError, match=r"^s3://no-such-bucket/store: the bucket"):
        pretrain(cfg)  # before Ray Train: no ray_cluster fixture here, and none is started

    prepare = ["data", "prepare", str(digits_root), "--image-size", "24", "--out"]
    assert main([*prepare, "s3://AKIAEXAMPLE:s3cr3t@bucket/store"]) == EXIT_FAIL
    err = capsys.readouterr().err
    assert "credentials in a store URI are refused" in err and "s3cr3t" not in err and "AKIA" not in err
    assert err.count("\n") == 1
    assert main([*prepare, "s3://bucket/store?secret_key=s3cr3t"]) == EXIT_FAIL
    assert "s3cr3t" not in capsys.readouterr().err

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert main(["evaluate", "runs:/0123", "--store", "s3://bucket/store", "--no-track"]) == EXIT_FAIL
    err = capsys.readouterr().err
    assert err.startswith("error: s3://bucket/store: cannot reach it") and err.count("\n") == 1
