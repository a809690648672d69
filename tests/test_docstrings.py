"""Every public name of the math modules cites the paper (and equation, algorithm or section)
it implements, in the docstring the API reference shows.

The API reference (mkdocs.yml, mkdocstrings) renders each module's ``__all__`` from the
source, statically; a docstring assigned at runtime (``f.__doc__ = ...``) never reaches it. So
each name is checked twice: its runtime docstring (``help()``) and its static one, read with
griffe as mkdocstrings reads it. A citation is the house style's ``Author et al. YEAR``,
``Author & Author YEAR`` or ``(Author YEAR`` (a single author in parentheses), e.g.
``(Ho et al. 2020, eq. 4)``, ``(Salimans & Ho 2022, Sec. 4)``, ``(Guttenberg 2023, ...)``.

Names that implement no paper's math need no citation: argument checks (``check_*``,
:data:`ARGUMENT_CHECK`) and the registries, containers, file I/O and bookkeeping listed in
:data:`NO_PAPER_MATH`, each group with its reason. Imports only: nothing is traced or compiled.
"""

import importlib
import inspect
import pathlib
import re

import pytest

MATH_MODULES = (
    "diffjax.processes",
    "diffjax.schedules",
    "diffjax.diffusion",
    "diffjax.predictions",
    "diffjax.losses",
    "diffjax.likelihood",
    "diffjax.distillation",
    "diffjax.lora",
    "diffjax.autoencoding",
    "diffjax.codecs",
    "diffjax.generation",
    "diffjax.samplers.ddpm",
    "diffjax.samplers.ddim",
    "diffjax.samplers.dpm_solver",
    "diffjax.samplers.edm",
    "diffjax.samplers.flow",
    "diffjax.samplers.sde",
    "diffjax.samplers.ode",
    "diffjax.samplers.grids",
    "diffjax.samplers.timesteps",
    "diffjax.samplers.guidance",
    "diffjax.samplers.steps",
    "diffjax.samplers.runner",
    "diffjax.samplers.common",
    "diffjax.samplers.input_gradient",
    "diffjax.metrics.frechet",
    "diffjax.metrics.kid",
    "diffjax.metrics.inception_score",
    "diffjax.metrics.precision_recall",
    "diffjax.metrics.image_quality",
    "diffjax.metrics.lpips",
    "diffjax.metrics.inception",
    "diffjax.metrics.straightness",
    "diffjax.models.unet",
    "diffjax.models.layers",
    "diffjax.models.attention",
    "diffjax.models.group_norm",
    "diffjax.models.transformer",
    "diffjax.models.dit",
    "diffjax.models.mmdit",
    "diffjax.models.autoencoder",
    "diffjax.models.controlnet",
    "diffjax.models.discriminator",
    "diffjax.models.classifier",
    "diffjax.models.clip",
    "diffjax.models.conditioning",
)
"""The modules whose public functions and classes implement the papers' math."""

_NAME = r"[A-Z][^\W\d_]+(?:-[A-Z][^\W\d_]+)*"  # Ho, Kynkäänniemi, Bińkowski, Sohl-Dickstein
CITATION = re.compile(rf"(?:{_NAME}\s+(?:et\s+al\.|&\s+{_NAME})|\({_NAME}),?\s+(?:19|20)\d\d\b")
"""``Ho et al. 2020``, ``Salimans & Ho 2022`` or ``(Guttenberg 2023``, across a line break too."""

NO_PAPER_MATH: dict[str, tuple[str, ...]] = {
    "option checks without a check_ prefix (ARGUMENT_CHECK covers the others)": (
        "diffjax.samplers.ode.ode_plan",
    ),
    "registries and lookups by name": (
        "diffjax.processes.get_process",
        "diffjax.processes.is_discrete",
        "diffjax.codecs.get_codec",
        "diffjax.codecs.is_identity",
        "diffjax.codecs.register_codec",
        "diffjax.models.conditioning.cond_keys",
        "diffjax.models.conditioning.data_cond_keys",
        "diffjax.models.conditioning.null_cond",
        "diffjax.models.conditioning.select_cond",
        "diffjax.models.controlnet.controlnet_fields",
    ),
    "containers: named tuples and adapters that hold values and compute nothing": (
        "diffjax.samplers.ode.OdeStats",
        "diffjax.samplers.grids.Grid",
        "diffjax.samplers.runner.BodySettings",
        "diffjax.samplers.runner.Denoiser",
        "diffjax.samplers.runner.Plan",
        "diffjax.samplers.runner.Point",
        "diffjax.samplers.runner.Step",
        "diffjax.samplers.common.Trajectory",
        "diffjax.metrics.frechet.FeatureMoments",
        "diffjax.metrics.lpips.LpipsWeightsFiles",
        "diffjax.models.conditioning.ModuleApply",
    ),
    "file I/O, weight files and PyTorch name tables": (
        "diffjax.metrics.frechet.load_features",
        "diffjax.metrics.frechet.load_npz",
        "diffjax.metrics.frechet.load_statistics",
        "diffjax.metrics.frechet.save_statistics",
        "diffjax.metrics.lpips.load_lpips",
        "diffjax.metrics.lpips.lpips_variable_shapes",
        "diffjax.metrics.lpips.lpips_variables_from_state_dicts",
        "diffjax.metrics.lpips.lpips_weights_files",
        "diffjax.metrics.inception.inception_key_table",
        "diffjax.metrics.inception.inception_variables_from_state_dict",
        "diffjax.metrics.inception.load_inception",
    ),
    "diffjax's own algebra, diagnostics and reference-code conventions, no paper equation": (
        "diffjax.predictions.determinant",
        "diffjax.autoencoding.codebook_perplexity",
        "diffjax.samplers.ode.per_sample_max_norm",
        "diffjax.metrics.inception.preprocess_inception_input",
        "diffjax.metrics.inception.resize_bilinear_tf1",
    ),
    "bookkeeping: jit plumbing, keys, sharding, pytree layout, shapes and counts": (
        "diffjax.processes.as_jit_argument",
        "diffjax.diffusion.extract",
        "diffjax.lora.flat_lora",
        "diffjax.lora.nested_lora",
        "diffjax.lora.lora_paths",
        "diffjax.lora.lora_rank",
        "diffjax.codecs.IdentityCodec",
        "diffjax.generation.class_labels",
        "diffjax.samplers.grids.make_grid",
        "diffjax.samplers.timesteps.concrete_schedule_array",
        "diffjax.samplers.guidance.compose_guides",
        "diffjax.samplers.runner.run_plan",
        "diffjax.samplers.common.as_model_pytree",
        "diffjax.samplers.common.constrain",
        "diffjax.samplers.common.initial_state",
        "diffjax.samplers.common.sample_keys",
        "diffjax.samplers.common.step_noise",
        "diffjax.samplers.common.takes_denoiser",
        "diffjax.samplers.input_gradient.canonical_kernel_layout",
        "diffjax.samplers.input_gradient.input_gradient",
        "diffjax.metrics.frechet.accumulate_moments",
        "diffjax.metrics.frechet.empty_moments",
        "diffjax.metrics.lpips.lpips_min_image_size",
        "diffjax.models.unet.count_params",
        "diffjax.models.unet.feature_map_sizes",
        "diffjax.models.autoencoder.decode_checked",
        "diffjax.models.autoencoder.latent_side",
        "diffjax.models.dit.stack_blocks",
        "diffjax.models.dit.unstack_blocks",
    ),
}
"""Public names that implement no paper's math, by reason (no citation is required)."""

ARGUMENT_CHECK = re.compile(r"^check(?:ed)?_")
"""``check_*`` / ``checked_*``: argument checks, which validate inputs and compute nothing."""

EXEMPT = frozenset(name for names in NO_PAPER_MATH.values() for name in names)


def _own_public_names(module_name: str) -> list[str]:
    """The module's ``__all__`` functions and classes defined in it (constants, type aliases
    and re-exports are left out; a re-export is checked in its own module)."""
    module = importlib.import_module(module_name)
    return [
        name
        for name in module.__all__
        if callable(value := getattr(module, name))
        and (inspect.isfunction(value) or inspect.isclass(value))
        and getattr(value, "__module__", None) == module_name
    ]


CHECKED = [
    f"{module}.{name}"
    for module in MATH_MODULES
    for name in _own_public_names(module)
    if f"{module}.{name}" not in EXEMPT and not ARGUMENT_CHECK.match(name)
]


def test_the_citation_pattern():
    for text in (
        "(Ho et al. 2020, eq. 4)",
        "Salimans & Ho 2022, Sec. 4",
        "(Kynkäänniemi et al. 2019, eqs. 1-3)",
        "Bińkowski et al. 2018",
        "(Nichol & Dhariwal\n    2021, Sec. 4)",
        "(Guttenberg 2023, a blog post)",
        "(van den Oord et al. 2017, eq. 2)",
    ):
        assert CITATION.search(text), text
    for text in ("DDPM's eq. 4", "Table 1 of 2022", "T = 1000 steps", "score_sde, eq. 6"):
        assert not CITATION.search(text), text


def test_the_lists_name_real_public_functions_and_classes():
    own = {f"{module}.{name}" for module in MATH_MODULES for name in _own_public_names(module)}
    assert EXEMPT <= own, sorted(EXEMPT - own)
    assert len(CHECKED) >= 150, len(CHECKED)  # the lists do not exempt the modules' math


def test_every_math_name_cites_its_paper_at_runtime():
    missing = []
    for qualified in CHECKED:
        module, _, name = qualified.rpartition(".")
        doc = inspect.getdoc(getattr(importlib.import_module(module), name)) or ""
        if not CITATION.search(doc):
            missing.append(qualified)
    assert not missing, missing


def test_every_math_name_cites_its_paper_in_the_api_reference():
    griffe = pytest.importorskip("griffe")  # mkdocstrings' reader ([docs] extra)
    import diffjax

    source_root = pathlib.Path(diffjax.__file__).resolve().parents[1]
    package = griffe.load("diffjax", search_paths=[str(source_root)])
    missing = []
    for qualified in CHECKED:
        module, _, name = qualified.rpartition(".")
        member = package[module.removeprefix("diffjax.")].members[name]
        doc = member.docstring.value if member.docstring else ""
        if not CITATION.search(doc):
            missing.append(qualified)
    assert not missing, missing
