"""What the training and sampling programs print: one-line messages and training progress.

Everything goes to stderr from process 0 only, so stdout stays free for the caller and a
multi-process run prints each line once.
"""

from __future__ import annotations

import sys
from typing import Any

import jax

__all__ = ["log", "report_progress"]


def log(message: str) -> None:
    """One line to stderr from process 0 (stdout stays free for the caller).

    Written through ``tqdm.write``, which moves a progress bar out of the way instead of
    breaking it.

    Args:
      message: the line, without a trailing newline.
    """
    if jax.process_index() == 0:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)


def report_progress(
    progress: Any, done: int, num_steps: int, loss: float, images_per_s: float,
    steps_per_s: float, elapsed: float,
) -> None:  # fmt: skip
    """Moves the progress bar, or prints one line per log interval when there is none.

    Args:
      progress: a ``tqdm`` bar, or None to print a line with the elapsed time and an ETA.
      done: steps completed so far.
      num_steps: the run's total steps.
      loss: the interval's mean loss.
      images_per_s: the interval's throughput in images per second.
      steps_per_s: the interval's train steps per second (for the ETA).
      elapsed: seconds since the run (this call of the program) started.
    """
    if jax.process_index() != 0:
        return
    eta = (num_steps - done) / steps_per_s if steps_per_s > 0 else float("nan")
    if progress is not None:
        # The rates are the training's own (evaluations and saves excluded), not tqdm's clock.
        progress.set_postfix(
            loss=f"{loss:.4f}", img_s=f"{images_per_s:.1f}",
            s_step=f"{1 / steps_per_s:.3g}" if steps_per_s > 0 else "?",
            eta=_format_duration(eta) if eta == eta else "?", refresh=False,
        )  # fmt: skip
        progress.update(done - progress.n)
        return
    log(
        f"step {done}/{num_steps}  loss {loss:.5f}  {images_per_s:.1f} images/s  "
        f"elapsed {_format_duration(elapsed)}  ETA {_format_duration(eta) if eta == eta else '?'}"
    )


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
