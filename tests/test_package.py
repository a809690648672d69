"""The package surface: what `import diffjax` loads and exports."""

import subprocess
import sys

import diffjax


def test_import_does_not_load_tensorflow_tfds_or_orbax():
    code = (
        "import sys, diffjax\n"
        "heavy = ('tensorflow', 'tensorflow_datasets', 'orbax', 'grain', 'chex')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_every_exported_name_resolves():
    for name in diffjax.__all__:
        assert getattr(diffjax, name) is not None, name
    from diffjax.training.loop import train_and_evaluate

    assert diffjax.train_and_evaluate is train_and_evaluate
