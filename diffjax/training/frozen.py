"""Frozen pytrees: the networks a run reads but does not train, loaded once and recorded.

An objective names them (:meth:`~diffjax.training.objectives.ObjectiveEntry.frozen`), and a
latent codec names its own: each source is a diffjax workdir (its newest good checkpoint's EMA
weights, restored parameters-only) or a parameter file (:mod:`diffjax.weights.params`) with its
SHA-256. :func:`load_frozen` places them on the mesh by the run's sharding rules (the same as
the state's) and returns what ``config.json`` records of them (path, step or checksum), so a
run says exactly what it was trained against. The loop passes them to every step as its
``frozen`` argument (DESIGN rule 10).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from diffjax.errors import ConfigError
from diffjax.training.objectives import objective_entry
from diffjax.training.programs import Programs
from diffjax.training.trained_run import load_trained_run, place
from diffjax.weights.files import sha256_of_file
from diffjax.weights.params import load_params

__all__ = ["frozen_sources", "load_frozen"]


def frozen_sources(values: Mapping[str, Any], codec: Any) -> dict[str, dict[str, Any]]:
    """The frozen pytrees of a run by name: the objective's and the codec's (``'codec'``)."""
    sources = dict(objective_entry(values["objective"]["name"]).frozen(values))
    codec_source = codec.frozen_source()
    if codec_source is not None:
        sources["codec"] = codec_source
    return sources


def _load_workdir(
    source: Mapping[str, Any], abstract: Any, mesh: Any
) -> tuple[Any, dict[str, Any]]:
    path = source["workdir"]
    run = load_trained_run(path, mesh)
    record = dict(workdir=os.path.abspath(path), step=run.step, weights="ema")
    params = run.state.ema_params
    if source.get("params_key"):
        params = params[source["params_key"]]
        record["params_key"] = source["params_key"]
    return place(params, abstract), record


def _load_diffusers(source: Mapping[str, Any], abstract: Any) -> tuple[Any, dict[str, Any]]:
    from diffjax.models.autoencoder_weights import DIFFUSERS_WEIGHTS_FILE
    from diffjax.models.pretrained import from_pretrained

    folder = source["diffusers"]
    _, params = from_pretrained(folder, sha256=source["sha256"])
    weights = os.path.join(os.path.abspath(folder), DIFFUSERS_WEIGHTS_FILE)
    return place(params, abstract), dict(diffusers=weights, sha256=sha256_of_file(weights))


def _load_weights(source: Mapping[str, Any], abstract: Any) -> tuple[Any, dict[str, Any]]:
    path = source["weights"]
    params = load_params(path, source.get("sha256"))
    return place(params, abstract), dict(weights=os.path.abspath(path), sha256=sha256_of_file(path))


def _load_lpips(net: str, abstract: Any) -> tuple[Any, dict[str, Any]]:
    from diffjax.metrics.lpips import load_lpips, lpips_weights_files

    files = lpips_weights_files(net)
    record = dict(lpips=net, sha256=[files.backbone.sha256, files.heads.sha256])
    return place(load_lpips(net), abstract), record


def load_frozen(
    values: Mapping[str, Any], programs: Programs, mesh: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Loads a run's frozen pytrees onto ``mesh``.

    Args:
      values: the validated config.
      programs: the run's programs (their ``abstract_frozen`` give shapes and shardings).
      mesh: the mesh.

    Returns:
      ``(frozen, record)``: ``{name: params}`` placed by the sharding rules, and ``{name:
      {'workdir': path, 'step': n} or {'weights': path, 'sha256': hex}}`` for ``config.json``.

    Raises:
      ConfigError: a source that is missing, has no checkpoint, or fails its checksum.
    """
    frozen, record = {}, {}
    for name, source in frozen_sources(values, programs.codec).items():
        abstract = programs.abstract_frozen[name]
        try:
            if "lpips" in source:
                frozen[name], record[name] = _load_lpips(source["lpips"], abstract)
            elif "diffusers" in source:
                frozen[name], record[name] = _load_diffusers(source, abstract)
            elif "workdir" in source:
                frozen[name], record[name] = _load_workdir(source, abstract, mesh)
            else:
                frozen[name], record[name] = _load_weights(source, abstract)
        except (OSError, ValueError, RuntimeError) as error:
            raise ConfigError(f"frozen {name!r} from {dict(source)}: {error}") from error
        if name == "codec" and hasattr(programs.codec, "record"):
            record[name].update(programs.codec.record())
    return frozen, record


def run_network_params(run: Any, params: Any) -> Any:
    """The network's parameters of a loaded run from its trained ``params`` (its EMA or raw
    weights): themselves, or, for an objective that trains something else (a LoRA of a frozen
    base), ``Objective.network_params`` of them and the run's frozen pytrees (loaded here)."""
    network_params = run.programs.objective.network_params
    if network_params is None:
        return params
    frozen, _ = load_frozen(run.config, run.programs, run.mesh)
    return network_params(params, frozen)
