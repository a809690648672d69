"""The package surface: what `import diffjax` loads and exports."""

import inspect
import subprocess
import sys

import diffjax


def test_import_does_not_load_tensorflow_tfds_orbax_absl_flax_or_diffrax():
    code = (
        "import sys, diffjax\n"
        "heavy = ('tensorflow', 'tensorflow_datasets', 'orbax', 'grain', 'chex', 'absl', 'flax', 'diffrax')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_every_exported_name_is_a_documented_function_class_or_constant():
    for name in diffjax.__all__:
        value = getattr(diffjax, name)
        if callable(value):
            assert inspect.getdoc(value), f"diffjax.{name} has no docstring"
        else:
            assert isinstance(value, (tuple, dict, frozenset)), (name, type(value))
    assert sorted(diffjax.__all__) == sorted(set(diffjax.__all__))


def test_lazy_names_are_their_modules_objects():
    from diffjax.images import make_grid
    from diffjax.training.loop import train_and_evaluate

    assert diffjax.train_and_evaluate is train_and_evaluate
    assert diffjax.make_image_grid is make_grid
    from diffjax.models import UNet

    assert diffjax.UNet is UNet
