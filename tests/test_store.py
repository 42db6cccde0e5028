"""The prepared store: what it holds is what decoding the files gives, a stopped or failed prepare
continues, a store of another source or size is refused, and reading it keeps memory bounded."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moco_core.config import ExperimentConfig
from moco_core.data import DataError, read_dataset
from moco_core.pipeline import eval_loader, pretrain_loader
from moco_core.store import FileImages, StoreError, StoreImages, check_source, prepare_here, read_index
from service.cli import main
from service.cli.codes import EXIT_FAIL, EXIT_OK

REPO = Path(__file__).resolve().parents[1]
SOURCE = {"root": "test"}


def xray_dataset(root: Path, n: int, size: int = 64, seed: int = 0, splits_dir: Path | None = None) -> Path:
    """16-bit X-ray-like PNGs (a bright disc on a dark field, noise) in nested folders; CSVs apart."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    csvs = splits_dir or root
    csvs.mkdir(parents=True, exist_ok=True)
    for part, count in (("train", n), ("val", max(4, n // 4)), ("test", max(4, n // 4))):
        rows = []
        for i in range(count):
            label = int(i % 2)
            r = size * (0.25 + 0.1 * label)
            disc = ((yy - size / 2) ** 2 + (xx - size / 2 + rng.integers(-4, 5)) ** 2) < r * r
            a = (disc * 30000 + rng.integers(0, 8000, (size, size))).astype(np.uint16)
            rel = f"patient{i % 3}/study{i}/view.png"
            (root / part / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(root / part / rel)
            rows.append((rel, label))
        with open(csvs / f"{part}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("Path", "Effusion"), *rows])
    return root


def test_store_holds_what_decoding_the_files_gives(tmp_path, digits_root):
    parts = read_dataset(digits_root)
    index = prepare_here(tmp_path / "s", parts, 24, 3, SOURCE, shard_bytes=200 * 3 * 24 * 24)
    assert {n: p["images"] for n, p in index["partitions"].items()} == {n: len(p) for n, p in parts.items()}
    assert len(index["partitions"]["train"]["shards"]) == -(-len(parts["train"]) // 200)  # 200 a shard
    assert (tmp_path / "s" / "csv" / "train.csv").read_text() == (digits_root / "train.csv").read_text()
    subset = parts["test"].take([5, 0, 359, 200])  # any subset, in any order: found by its paths
    files, store = FileImages(subset, 3, 24), StoreImages(tmp_path / "s", subset)
    for i in range(len(subset)):
        (a, size_a), (b, size_b) = files.item(i), store.item(i)
        assert np.array_equal(a, b) and size_a == size_b == (32, 32)


def test_loaders_give_the_same_batches_from_the_store_and_from_the_files(tmp_path):
    root = xray_dataset(tmp_path / "x", 24, splits_dir=tmp_path / "splits")
    parts = read_dataset(root, tmp_path / "splits")
    prepare_here(tmp_path / "s", parts, 40, 1, SOURCE)
    batches = {}
    for store in (None, str(tmp_path / "s")):
        data = {"root": str(root), "splits_dir": str(tmp_path / "splits"), "channels": 1}
        data.update(image_size=32, store_size=40, store=store, num_workers=2)
        cfg = ExperimentConfig.model_validate(
            {
                "data": data,
                "optim": {"batch_size": 8},
                "augment": {"recipe": "cxr"},
                "moco": {"split_bn_groups": 4},
            }
        )
        cfg = cfg.model_copy(update={"scaling": cfg.scaling.model_copy(update={"cpus_per_worker": 2})})
        loader = pretrain_loader(cfg, parts["train"])
        loader.sampler.set_epoch(1)
        batches[store] = [next(iter(loader)), next(iter(eval_loader(cfg.data, parts["test"], 4)))]
    (q, k, rows), (x, i) = batches[None]
    assert q.shape == (8, 1, 32, 32) and x.shape == (4, 1, 32, 32) and i.tolist() == [0, 1, 2, 3]
    assert not torch.equal(q, k) and not torch.equal(q[0], q[1])  # per view, per sample
    (q2, k2, rows2), (x2, _) = batches[str(tmp_path / "s")]
    assert torch.equal(q, q2) and torch.equal(k, k2) and torch.equal(x, x2)
    assert torch.equal(rows, rows2) and len(set(rows.tolist())) == 8  # each sample's row in the partition
    assert float(x.std()) > 0.3  # the 16-bit range became contrast, not a flat image


def test_bad_images_are_named_and_the_good_shards_kept(tmp_path, digits_root):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(digits_root, root)
    parts = read_dataset(root)
    bad = parts["train"].paths[3]
    bad.write_bytes(bad.read_bytes()[:30])  # truncated
    per = 100 * 3 * 32 * 32
    with pytest.raises(DataError) as e:
        prepare_here(tmp_path / "s", parts, 32, 3, SOURCE, shard_bytes=per)
    (fault,) = e.value.faults
    assert (fault.partition, fault.row, fault.file) == ("train", 5, parts["train"].relpath(3))
    written = sorted(p.name for p in (tmp_path / "s").glob("*.npy"))
    assert "train-00000.npy" not in written and "train-00001.npy" in written and "test-00000.npy" in written
    assert not list((tmp_path / "s").glob(".*tmp*")) and not (tmp_path / "s" / "store.json").exists()
    with pytest.raises(StoreError, match="is not finished"):
        read_index(tmp_path / "s")
    shutil.copy(parts["train"].paths[4], bad)  # fixed: the next prepare writes the one missing shard
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "s").glob("*.npy")}
    prepare_here(tmp_path / "s", parts, 32, 3, SOURCE, shard_bytes=per)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "s").glob("*.npy")}
    assert set(after) - set(before) == {"train-00000.npy"}
    assert all(after[n] == t for n, t in before.items())


def test_a_killed_prepare_continues_where_it_stopped(tmp_path):
    root = xray_dataset(tmp_path / "x", 160, size=256)
    script = textwrap.dedent(
        f"""
        from moco_core.data import read_dataset
        from moco_core.store import prepare_here
        parts = read_dataset({str(root)!r})
        prepare_here({str(tmp_path / "s")!r}, parts, 256, 1, {SOURCE!r}, threads=1, shard_bytes=4 * 65536)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    deadline = time.monotonic() + 120
    while len(list((tmp_path / "s").glob("*.npy"))) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, "the prepare ended before it was killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "s").glob("*.npy")}
    assert not (tmp_path / "s" / "store.json").exists()
    parts = read_dataset(root)
    prepare_here(tmp_path / "s", parts, 256, 1, SOURCE, shard_bytes=1 << 30)  # its own plan wins
    assert all((tmp_path / "s" / n).stat().st_mtime_ns == t for n, t in done.items())
    assert not list((tmp_path / "s").glob(".*tmp*"))
    fresh = prepare_here(tmp_path / "fresh", parts, 256, 1, SOURCE, shard_bytes=4 * 65536)
    for entry in fresh["partitions"].values():
        for shard in entry["shards"]:
            a = np.load(tmp_path / "s" / shard["file"])
            assert np.array_equal(a, np.load(tmp_path / "fresh" / shard["file"])), shard["file"]


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return r.returncode == 0


def test_a_full_disk_keeps_the_finished_shards_and_the_next_prepare_finishes(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "4m"):
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk test needs a real small disk")
    try:
        root = xray_dataset(tmp_path / "x", 40, size=128)
        parts = read_dataset(root)
        ballast = disk / "ballast"
        ballast.write_bytes(b"\0" * (3 << 20))  # 1 MB left: a few shards of 64 KB images fit
        with pytest.raises(StoreError, match="no space left on the device") as e:
            prepare_here(disk / "s", parts, 128, 1, SOURCE, threads=1, shard_bytes=4 * 16384)
        assert "continues where it stopped" in str(e.value)
        done = {p.name: p.stat().st_mtime_ns for p in (disk / "s").glob("*.npy")}
        assert done and not list((disk / "s").glob(".*tmp*"))  # no half-written shard
        for name in done:  # each finished shard is whole
            assert np.load(disk / "s" / name).shape[1:] == (1, 128, 128)
        ballast.unlink()
        index = prepare_here(disk / "s", parts, 128, 1, SOURCE, threads=1)
        assert all((disk / "s" / n).stat().st_mtime_ns == t for n, t in done.items())
        assert sum(p["images"] for p in index["partitions"].values()) == 60
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_store_of_another_source_or_size_is_refused_before_ray_starts(
    ray_cluster, tmp_path, digits_root, capsys
):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(digits_root, root)
    parts = read_dataset(root)
    assert main(["data", "prepare", str(root), "--out", str(tmp_path / "s"), "--image-size", "16"]) == EXIT_OK
    assert "store " in capsys.readouterr().out
    index = read_index(tmp_path / "s")
    check_source(tmp_path / "s", index, parts, 16)  # the same source and size: fine
    with pytest.raises(StoreError, match="16 px and this run asks for 40 px"):
        check_source(tmp_path / "s", index, parts, 40)
    check_source(tmp_path / "s", dict(index, channels=1), parts, 16, 3)  # gray serves RGB, replicated
    with pytest.raises(StoreError, match="3-channel images and data.channels is 1"):
        check_source(tmp_path / "s", dict(index, channels=3), parts, 16, 1)
    test = parts["test"]
    with open(root / "test.csv", "a") as f:  # the dataset changes: one more row (the first image again)
        f.write(f"{test.paths[0].relative_to(root / 'test').as_posix()},{test.classes[test.targets[0]]}\n")
    args = ["pretrain", str(REPO / "experiments/digits.yaml"), "--set", f"data.root={root}"]
    args += ["--set", f"data.store={tmp_path / 's'}", "--set", f"run.storage_path={tmp_path / 'runs'}"]
    assert main(args) == EXIT_FAIL
    err = capsys.readouterr().err
    assert "prepared from another version of partition 'test'" in err and "moco data prepare" in err
    assert not (tmp_path / "runs").exists()  # refused before any run was started
    # preparing again updates what changed (the test shard) and nothing else
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "s").glob("*.npy")}
    assert main(["data", "prepare", str(root), "--out", str(tmp_path / "s"), "--image-size", "16"]) == EXIT_OK
    changed = {p.name for p in (tmp_path / "s").glob("*.npy") if p.stat().st_mtime_ns != before.get(p.name)}
    assert changed == {"test-00000.npy"}
    assert "2 of 3 shards were already written" in capsys.readouterr().err
    check_source(tmp_path / "s", read_index(tmp_path / "s"), read_dataset(root), 16)
    # a folder holding the store of another dataset is never overwritten
    with pytest.raises(StoreError, match="already holds a store of another dataset"):
        prepare_here(tmp_path / "s", read_dataset(digits_root), 16, 3, {"root": str(digits_root)})
    assert (tmp_path / "s" / "store.json").is_file()


MEASURE = """
import json, sys, threading, time
import psutil, torch
from moco_core.config import ExperimentConfig
from moco_core.data import read_dataset
from moco_core.engine import build_train_state, fit
from moco_core.pipeline import pretrain_loader, steps_per_epoch
root, store = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
cfg = ExperimentConfig.model_validate({
    "data": {"root": root, "store": store, "image_size": 32, "channels": 1, "num_workers": 2},
    "model": {"arch": "resnet18"}, "augment": {"recipe": "cxr"},
    "optim": {"batch_size": 8, "epochs": 1}, "moco": {"queue_size": 64, "split_bn_groups": 4},
    "scaling": {"cpus_per_worker": 2}, "run": {"max_steps_per_epoch": 3, "channels_last": False},
})
peak = [0]
me = psutil.Process()
def sample():
    while True:
        procs = [me, *me.children(recursive=True)]
        pss = 0
        for p in procs:  # proportional: pages shared by the loader workers are counted once in all
            try:
                pss += p.memory_full_info().pss
            except psutil.Error:
                pass
        peak[0] = max(peak[0], pss)
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
train = read_dataset(root, partitions=("train",))["train"]
state = build_train_state(cfg, steps_per_epoch(len(train), cfg))
fit(state, pretrain_loader(cfg, train), cfg)
time.sleep(0.1)
print(json.dumps({"peak": peak[0]}))
"""


def test_worker_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """Peak memory (PSS) of a training process and its loader workers on N and on 4N 512 x 512 images."""
    peaks = {}
    for n in (24, 96):
        root = xray_dataset(tmp_path / f"x{n}", n, size=512, seed=n)
        prepare_here(tmp_path / f"s{n}", read_dataset(root), 32, 1, SOURCE)
        out = subprocess.run(
            [sys.executable, "-c", MEASURE, str(root), str(tmp_path / f"s{n}")],
            cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
    # the full-resolution cache this replaced grew by ~6.6 MB of worker memory per 1 MB image (+48 %)
    print("peak PSS:", {n: f"{p / 2**20:.0f} MB" for n, p in peaks.items()})
    assert peaks[96] < 1.08 * peaks[24] and peaks[96] - peaks[24] < 64 << 20, peaks


@pytest.mark.slow
def test_loader_workers_are_bounded_by_the_cpus_of_the_worker(caplog):
    from moco_core.pipeline import loader_workers

    with caplog.at_level("WARNING", logger="moco_core.pipeline"):
        assert loader_workers(8, 2) == 2
        assert loader_workers(8, 2) == 2  # noted once
        assert loader_workers(1, 4) == 1
    (note,) = caplog.records
    assert "data.num_workers=8" in note.getMessage() and "scaling.cpus_per_worker" in note.getMessage()


def test_an_edited_label_is_noticed_and_preparing_again_rewrites_only_the_csv_copies(tmp_path, digits_root):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(digits_root, root)
    prepare_here(tmp_path / "s", read_dataset(root), 16, 1, SOURCE)
    lines = (root / "val.csv").read_text().splitlines()
    path, label = lines[1].rsplit(",", 1)
    lines[1] = f"{path},{(int(label) + 1) % 10}"  # the same image, another label
    (root / "val.csv").write_text("\n".join(lines) + "\n")
    parts = read_dataset(root)
    check_source(tmp_path / "s", read_index(tmp_path / "s"), parts)  # labels read from the dataset: fine
    with pytest.raises(StoreError, match=r"val.csv changed since .* \(only the CSV copies are rewritten\)"):
        check_source(tmp_path / "s", read_index(tmp_path / "s"), parts, labels=True)  # from the store
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "s").glob("*.npy")}
    prepare_here(tmp_path / "s", parts, 16, 1, SOURCE)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "s").glob("*.npy")} == before
    assert (tmp_path / "s" / "csv" / "val.csv").read_text() == (root / "val.csv").read_text()
    check_source(tmp_path / "s", read_index(tmp_path / "s"), parts, labels=True)
