"""Input pipeline: real Fashion-MNIST from the local IDX files, folders, a PNG TFDS dataset.

Oracles: the IDX files parsed independently here (header skipped by its documented size), and
the TFDS data source read directly, example by example. Nothing here touches the network: the
Fashion-MNIST tests read the Debian files, and the error tests forbid downloads or fake an
unreachable host.
"""

import collections
import gzip
import io
import json
import os
import socket
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from diffjax.data import pipeline as data
from diffjax.data.datasets import DatasetUnavailableError, fashion_mnist, folder, preprocess

IDX_DIR = fashion_mnist.DEFAULT_IDX_DIR
HAVE_IDX = fashion_mnist.find_idx_files(IDX_DIR) is not None
needs_idx = pytest.mark.skipif(
    not HAVE_IDX,
    reason=f"Fashion-MNIST IDX files absent from {IDX_DIR}: "
    f"`{fashion_mnist.APT_INSTALL_COMMAND}` installs them.",
)
SMALL_SPLIT = "test[:2000]"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails the test: tests must never need the network."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to open a network connection: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="session")
def fm_dir(tmp_path_factory):
    """A TFDS data dir with Fashion-MNIST prepared once per session (~8 s) from the local files."""
    if not HAVE_IDX:
        pytest.skip(f"Fashion-MNIST IDX files absent from {IDX_DIR}.")
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    fashion_mnist.prepare_fashion_mnist(data_dir=data_dir, idx_dir=IDX_DIR, download=False)
    return data_dir


def fm_dataset(fm_dir, **kwargs):
    arguments = dict(
        name="fashion_mnist",
        split=SMALL_SPLIT,
        image_size=28,
        batch_size=64,
        seed=0,
        data_dir=fm_dir,
        download=False,
        process_index=0,
        process_count=1,
    )
    arguments.update(kwargs)
    return data.create_dataset(**arguments)


def take(dataset, count, state=None):
    with iter(dataset) as iterator:
        if state is not None:
            iterator.set_state(state)
        return [next(iterator) for _ in range(count)]


def raw_examples(fm_dir, split):
    """(images uint8 [N, 28, 28, 1], labels [N]) straight from the TFDS data source."""
    builder = fashion_mnist.prepare_fashion_mnist(data_dir=fm_dir, download=False)
    source = builder.as_data_source(split=split)
    examples = source.__getitems__(list(range(len(source))))
    images = np.stack([example["image"] for example in examples])
    labels = np.asarray([example["label"] for example in examples])
    return images, labels


def to_uint8(images):
    """Inverts x / 127.5 - 1 exactly (float32 arithmetic is exact here up to rounding)."""
    pixels = (images.astype(np.float64) + 1.0) * 127.5
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-4)
    return np.round(pixels).astype(np.uint8)


def example_keys(images_uint8, labels):
    return collections.Counter(
        (image.tobytes(), int(label)) for image, label in zip(images_uint8, labels, strict=True)
    )


def read_idx_independently(name):
    """IDX per its spec: magic (4 bytes), sizes (4 bytes per dim), then uint8 data."""
    with gzip.open(os.path.join(IDX_DIR, name), "rb") as f:
        raw = f.read()
    if "images" in name:
        return np.frombuffer(raw[16:], np.uint8).reshape(-1, 28, 28)
    return np.frombuffer(raw[8:], np.uint8)


# ---------------------------------------------------------------------------- Fashion-MNIST


@needs_idx
def test_prepared_test_split_holds_exactly_the_idx_examples(fm_dir):
    images, labels = raw_examples(fm_dir, "test")
    ref_images = read_idx_independently(fashion_mnist.IDX_FILES["test_images"])
    ref_labels = read_idx_independently(fashion_mnist.IDX_FILES["test_labels"])
    assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
    # TFDS shuffles when it writes, so compare as multisets of (pixels, label).
    assert example_keys(images[..., 0], labels) == example_keys(ref_images, ref_labels)
    info = data.get_dataset_info(
        name="fashion_mnist", split="train", image_size=28, data_dir=fm_dir
    )
    assert info.num_examples == 60_000 and info.num_classes == 10 and info.channels == 1


@needs_idx
def test_unknown_split_is_a_value_error_naming_the_splits(fm_dir):
    with pytest.raises(ValueError, match=r"'validation' is not a split.*'train', 'test'"):
        data.create_dataset(
            name="fashion_mnist",
            split="validation",
            image_size=28,
            batch_size=8,
            seed=0,
            data_dir=fm_dir,
            download=False,
        )


@needs_idx
def test_batches_have_shapes_range_and_labels(fm_dir):
    dataset = fm_dataset(fm_dir, random_flip=True)
    assert dataset.info.image_shape == (28, 28, 1) and dataset.info.num_examples == 2000
    for batch in take(dataset, 3):
        assert batch["image"].shape == (64, 28, 28, 1) and batch["image"].dtype == np.float32
        assert batch["cond"]["label"].shape == (64,) and batch["cond"]["label"].dtype == np.int32
        assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
        assert set(np.unique(batch["cond"]["label"])) <= set(range(10))
        to_uint8(batch["image"])  # every value is k / 127.5 - 1 for an integer k
    # Fashion-MNIST uses the full pixel range: both ends map exactly onto -1 and 1.
    assert batch["image"].min() == -1.0 and batch["image"].max() == 1.0


@needs_idx
def test_unshuffled_batch_is_the_source_scaled_to_minus_one_one(fm_dir):
    images, labels = raw_examples(fm_dir, SMALL_SPLIT)
    (batch,) = take(fm_dataset(fm_dir, shuffle=False, num_threads=0), 1)
    expected = images[:64].astype(np.float64) / 127.5 - 1.0
    np.testing.assert_allclose(batch["image"], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(batch["cond"]["label"], labels[:64])


@needs_idx
def test_order_is_fixed_by_the_seed_and_not_by_threads(fm_dir):
    first = take(fm_dataset(fm_dir, seed=3, random_flip=True, num_threads=0), 4)
    again = take(fm_dataset(fm_dir, seed=3, random_flip=True, num_threads=4), 4)
    other = take(fm_dataset(fm_dir, seed=4, random_flip=True, num_threads=4), 4)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["cond"]["label"], b["cond"]["label"])
    assert not np.array_equal(first[0]["image"], other[0]["image"])


@needs_idx
def test_each_epoch_is_a_new_permutation_of_the_split(fm_dir):
    split = "test[:256]"
    images, labels = raw_examples(fm_dir, split)
    batches = take(fm_dataset(fm_dir, split=split), 8)  # two epochs of 4 batches
    epochs = [
        (
            np.concatenate([to_uint8(b["image"]) for b in part]),
            np.concatenate([b["cond"]["label"] for b in part]),
        )
        for part in (batches[:4], batches[4:])
    ]
    for epoch_images, epoch_labels in epochs:
        assert example_keys(epoch_images, epoch_labels) == example_keys(images, labels)
    assert not np.array_equal(epochs[0][0], epochs[1][0])


def _host_batches(fm_dir, count, num_hosts, state=None, **kwargs):
    """The first ``count`` global batches of ``num_hosts`` hosts, each host's rows concatenated."""
    per_host = [
        take(
            fm_dataset(fm_dir, batch_size=64 // num_hosts, process_index=index,
                       process_count=num_hosts, **kwargs),
            count, state=state,
        )
        for index in range(num_hosts)
    ]  # fmt: skip
    return [
        jax.tree.map(lambda *parts: np.concatenate(parts), *[host[k] for host in per_host])
        for k in range(count)
    ]


@needs_idx
@pytest.mark.parametrize("num_hosts", [2, 4])
def test_hosts_together_feed_the_batches_of_one_host(fm_dir, num_hosts):
    kwargs = dict(seed=3, random_flip=True)
    one_host = take(fm_dataset(fm_dir, **kwargs), 3)
    for single, joined in zip(one_host, _host_batches(fm_dir, 3, num_hosts, **kwargs), strict=True):
        np.testing.assert_array_equal(single["image"], joined["image"])
        np.testing.assert_array_equal(single["cond"]["label"], joined["cond"]["label"])


@needs_idx
def test_a_state_resumes_on_another_number_of_hosts(fm_dir):
    kwargs = dict(seed=5, random_flip=True)
    with iter(fm_dataset(fm_dir, **kwargs)) as iterator:
        for _ in range(2):
            next(iterator)
        state = json.loads(json.dumps(iterator.get_state()))
        expected = [next(iterator) for _ in range(2)]
    for single, joined in zip(expected, _host_batches(fm_dir, 2, 2, state=state, **kwargs),
                              strict=True):  # fmt: skip
        np.testing.assert_array_equal(single["image"], joined["image"])


@needs_idx
def test_a_short_last_batch_is_padded_on_several_hosts_and_covers_the_split(fm_dir):
    split = "test[:301]"  # 301 = 4 * 64 + 45: the fifth global batch is short
    images, labels = raw_examples(fm_dir, split)
    kwargs = dict(split=split, shuffle=False, num_epochs=1, drop_remainder=False)
    (short,) = take(fm_dataset(fm_dir, **kwargs), 5)[4:]
    assert short["cond"]["label"].shape == (45,)
    joined = _host_batches(fm_dir, 5, 2, **kwargs)
    assert [batch["cond"]["label"].shape[0] for batch in joined] == [64] * 5
    got = np.concatenate([to_uint8(batch["image"]) for batch in joined])
    np.testing.assert_array_equal(got[:301], images)
    np.testing.assert_array_equal(
        np.concatenate([b["cond"]["label"] for b in joined])[:301], labels
    )
    np.testing.assert_array_equal(got[301:], np.repeat(images[-1:], 19, axis=0))


@needs_idx
def test_random_flip_mirrors_about_half_the_images(fm_dir):
    images, _ = raw_examples(fm_dir, SMALL_SPLIT)
    (batch,) = take(fm_dataset(fm_dir, shuffle=False, random_flip=True, batch_size=128), 1)
    got = to_uint8(batch["image"])
    original, mirrored = images[:128], images[:128, :, ::-1]
    is_original = np.all(got == original, axis=(1, 2, 3))
    is_mirrored = np.all(got == mirrored, axis=(1, 2, 3))
    assert np.all(is_original | is_mirrored)
    flipped = np.sum(is_mirrored & ~is_original)
    # Binomial(128, 1/2) minus the few symmetric images: outside [34, 94] has p < 1e-7.
    assert 34 <= flipped <= 94


@needs_idx
def test_restored_state_continues_with_the_same_batches(fm_dir):
    kwargs = dict(seed=7, random_flip=True, num_threads=2)
    with iter(fm_dataset(fm_dir, **kwargs)) as iterator:
        for _ in range(3):
            next(iterator)
        state = json.loads(json.dumps(iterator.get_state()))  # as the checkpoint stores it
        expected = [next(iterator) for _ in range(4)]
    resumed = take(fm_dataset(fm_dir, **kwargs), 4, state=state)
    for a, b in zip(expected, resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["cond"]["label"], b["cond"]["label"])


@needs_idx
def test_state_from_another_pipeline_is_rejected(fm_dir):
    with iter(fm_dataset(fm_dir)) as iterator:
        next(iterator)
        state = iterator.get_state()
    with iter(fm_dataset(fm_dir, batch_size=32)) as other:
        with pytest.raises(ValueError, match="global_batch_size=64 in the state but 32 here"):
            other.set_state(state)
        with pytest.raises(ValueError, match="input-pipeline state"):
            other.set_state({"next_index": 3})


@needs_idx
def test_host_batch_becomes_a_global_array_split_over_the_devices(fm_dir):
    import jax

    from diffjax import sharding

    mesh = sharding.make_mesh(jax.devices())  # conftest: 8 CPU devices
    (batch,) = take(fm_dataset(fm_dir), 1)
    global_batch = sharding.host_batch_to_global(batch, mesh)
    assert global_batch["image"].shape == (64, 28, 28, 1)
    assert {shard.data.shape for shard in global_batch["image"].addressable_shards} == {
        (64 // len(jax.devices()), 28, 28, 1)
    }
    np.testing.assert_array_equal(np.asarray(global_batch["image"]), batch["image"])
    np.testing.assert_array_equal(np.asarray(global_batch["cond"]["label"]), batch["cond"]["label"])


def test_missing_fashion_mnist_fails_at_once_with_the_fix(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()

    def no_retries(seconds):
        raise AssertionError(f"the pipeline waited {seconds} s (a retry) instead of failing")

    monkeypatch.setattr(time, "sleep", no_retries)
    with pytest.raises(DatasetUnavailableError) as error:
        data.create_dataset(
            name="fashion_mnist",
            image_size=28,
            batch_size=8,
            seed=0,
            data_dir=tmp_path / "tfds",
            manual_dir=empty,
            download=False,
        )
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "config.data.manual_dir" in message and str(empty) in message


def test_unreachable_download_host_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "_host_reachable", lambda host, **kwargs: False)
    with pytest.raises(DatasetUnavailableError, match="cannot be reached"):
        fashion_mnist.prepare_fashion_mnist(data_dir=tmp_path, idx_dir=tmp_path, download=True)


@needs_idx
def test_read_idx_reads_compressed_and_plain_files_alike(tmp_path):
    name = fashion_mnist.IDX_FILES["test_labels"]
    plain = tmp_path / "labels"  # no extension: TFDS's download cache renames files
    with gzip.open(os.path.join(IDX_DIR, name), "rb") as f:
        plain.write_bytes(f.read())
    expected = read_idx_independently(name)
    np.testing.assert_array_equal(fashion_mnist.read_idx(plain), expected)
    np.testing.assert_array_equal(fashion_mnist.read_idx(os.path.join(IDX_DIR, name)), expected)


def test_read_idx_rejects_a_non_idx_file(tmp_path):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="not a uint8 IDX file"):
        fashion_mnist.read_idx(path)


# ---------------------------------------------------------------------------- stock TFDS


class DiffjaxTestPngImages(tfds.core.GeneratorBasedBuilder):
    """A stock-style TFDS dataset: PNG-encoded ``Image`` features of varying size + labels."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for index in range(12):
            height, width = (20, 30) if index % 2 else (30, 20)
            pixels = np.full((height, width, 3), 10 * index, np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")  # encoded without TensorFlow
            yield index, {"image": buffer.getvalue(), "label": index % 3}


@pytest.fixture
def png_dir(tmp_path):
    DiffjaxTestPngImages(data_dir=tmp_path).download_and_prepare(file_format="array_record")
    return tmp_path


def test_stock_tfds_image_dataset_is_read_and_decoded_without_tensorflow(png_dir):
    dataset = data.create_dataset(
        name="diffjax_test_png_images",
        image_size=16,
        batch_size=12,
        seed=0,
        data_dir=png_dir,
        download=False,
        shuffle=False,
        process_index=0,
        process_count=1,
    )
    assert dataset.info.num_classes == 3 and dataset.info.image_shape == (16, 16, 3)
    (batch,) = take(dataset, 1)
    assert batch["image"].shape == (12, 16, 16, 3)
    # Constant images stay constant through crop + bicubic resize: value 10 * index.
    values = to_uint8(batch["image"]).reshape(12, -1)
    assert np.all(values == values[:, :1])
    labels = batch["cond"]["label"]
    np.testing.assert_array_equal(values[:, 0] // 10 % 3, labels)


def test_dataset_stored_without_random_access_is_rejected(png_dir):
    (info_path,) = png_dir.glob("diffjax_test_png_images/*/dataset_info.json")
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"  # as `tfds.load` would have written it
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetUnavailableError, match="no random access"):
        data.create_dataset(
            name="diffjax_test_png_images",
            image_size=16,
            batch_size=4,
            seed=0,
            data_dir=png_dir,
            download=False,
        )


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("tensorflow") is not None,
    reason="TensorFlow is installed, so stock datasets can be prepared.",
)
def test_unprepared_stock_dataset_without_tensorflow_names_the_extra(tmp_path):
    with pytest.raises(DatasetUnavailableError, match=r'pip install "diffjax\[tf\]"'):
        data.create_dataset(name="cifar10", image_size=32, batch_size=8, seed=0, data_dir=tmp_path)
    with pytest.raises(DatasetUnavailableError, match="config.data.data_dir"):
        data.create_dataset(
            name="cifar10", image_size=32, batch_size=8, seed=0, data_dir=tmp_path, download=False
        )
    info = data.get_dataset_info(name="cifar10", image_size=32, data_dir=tmp_path)
    assert info.num_classes == 10 and info.channels == 3 and info.num_examples is None


def test_unknown_dataset_name_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="a registered dataset nor a TFDS dataset; \\(TFDS"):
        data.get_dataset_info(name="no_such_dataset_xyz", image_size=8, data_dir=tmp_path)


def test_a_dataset_typo_names_the_nearest_datasets_in_one_line(tmp_path):
    with pytest.raises(ValueError) as raised:
        data.get_dataset_info(name="fashon_mnist", image_size=8, data_dir=tmp_path)
    message = str(raised.value)
    assert "did you mean 'fashion_mnist'?" in message and "\n" not in message


# ---------------------------------------------------------------------------- folders


def write_image(path, pixels, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=mode).save(path)


def test_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)  # H=32, W=48
    write_image(tmp_path / "cat" / "wide.png", wide)
    write_image(tmp_path / "cat" / "nested" / "flat.png", np.full((40, 40, 3), 9, np.uint8))
    write_image(tmp_path / "dog" / "tall.jpg", np.full((50, 30, 3), 200, np.uint8))
    dataset = data.create_dataset(
        name="folder",
        data_dir=tmp_path,
        image_size=32,
        batch_size=3,
        seed=0,
        shuffle=False,
        process_index=0,
        process_count=1,
    )
    assert dataset.info.class_names == ("cat", "dog") and dataset.info.num_examples == 3
    (batch,) = take(dataset, 1)
    assert batch["image"].shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(batch["cond"]["label"], [0, 0, 1])
    got = to_uint8(batch["image"])
    # Sorted walk, a folder's own files before its subfolders': cat/wide.png,
    # cat/nested/flat.png, dog/tall.jpg.
    np.testing.assert_array_equal(got[0], wide[:, 8:40])  # central 32 columns, no resize
    np.testing.assert_array_equal(got[1], np.full((32, 32, 3), 9, np.uint8))
    # A constant JPEG decodes within a few levels of its value and stays constant when resized.
    assert np.abs(got[2].astype(int) - 200).max() <= 2


def test_flat_grayscale_folder_has_one_channel_and_no_labels(tmp_path):
    for index in range(5):
        write_image(tmp_path / f"{index}.png", np.full((8, 8), 50 * index, np.uint8), mode="L")
    info = data.get_dataset_info(name="folder", data_dir=tmp_path, image_size=4)
    assert info.channels == 1 and info.num_classes is None and info.num_examples == 5
    dataset = data.create_dataset(
        name="folder",
        data_dir=tmp_path,
        image_size=4,
        batch_size=5,
        seed=0,
        shuffle=False,
        process_index=0,
        process_count=1,
    )
    (batch,) = take(dataset, 1)
    assert batch["cond"] == {} and batch["image"].shape == (5, 4, 4, 1)
    np.testing.assert_array_equal(to_uint8(batch["image"])[:, 0, 0, 0], [0, 50, 100, 150, 200])


def test_folder_layout_errors(tmp_path):
    with pytest.raises(ValueError, match="holds no image"):
        folder.ImageFolderSource(tmp_path)
    write_image(tmp_path / "top.png", np.zeros((4, 4, 3), np.uint8))
    write_image(tmp_path / "class_a" / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="use one layout"):
        folder.ImageFolderSource(tmp_path)
    with pytest.raises(ValueError, match="single split"):
        data.get_dataset_info(name="folder", split="test", data_dir=tmp_path, image_size=4)
    with pytest.raises(ValueError, match="not a directory"):
        folder.ImageFolderSource(tmp_path / "missing")


# ---------------------------------------------------------------------------- preprocessing


def test_center_crop_resize_keeps_content_and_antialiases():
    stripes = np.zeros((64, 96, 1), np.uint8)
    stripes[:, 1::2] = 255  # 1-pixel stripes: a 4x shrink must average them to grey
    out = preprocess.center_crop_resize(stripes, 16)
    assert out.shape == (16, 16, 1) and out.dtype == np.uint8
    assert np.abs(out[2:-2, 2:-2].astype(int) - 128).max() <= 2


def test_rgb_resize_equals_resizing_each_channel_alone():
    rgb = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    out = preprocess.center_crop_resize(rgb, 16)
    for c in range(3):
        alone = preprocess.center_crop_resize(rgb[..., c : c + 1], 16)
        np.testing.assert_array_equal(out[..., c], alone[..., 0])


def test_to_model_range_endpoints():
    out = preprocess.to_model_range(np.array([0, 255, 127], np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-1.0, 1.0, 127 / 127.5 - 1], rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(image_size=0), ValueError, "image_size must be >= 1"),
        (dict(batch_size=2.0), TypeError, "batch_size must be an int"),
        (dict(seed=-1), ValueError, "seed must be >= 0"),
        (dict(process_index=2, process_count=2), ValueError, "process_index must be"),
        (dict(process_index=0), ValueError, "both process_index and process_count"),
        (dict(num_epochs=0), ValueError, "num_epochs must be >= 1"),
        (dict(name=""), TypeError, "name must be a non-empty str"),
    ],
)
def test_bad_arguments_are_rejected_before_any_data_is_touched(tmp_path, kwargs, error, match):
    arguments = dict(
        name="fashion_mnist",
        image_size=8,
        batch_size=4,
        seed=0,
        data_dir=tmp_path / "nothing_here",
        download=False,
    )
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        data.create_dataset(**arguments)
    assert not (tmp_path / "nothing_here").exists()
