"""Console output of the training loop: the progress bar carries the training's own rate."""

import io

from tqdm import tqdm

from diffjax.training.console import report_progress


def test_the_progress_bar_shows_the_trainings_own_step_time_and_eta():
    """The rate and ETA come from the training time the loop measured (evaluations and saves
    excluded), not from tqdm's wall clock: 60 steps left at 2 steps/s is 30 s."""
    buffer = io.StringIO()
    bar = tqdm(total=100, file=buffer, bar_format="{n_fmt}/{total_fmt}{postfix}")
    report_progress(bar, 40, 100, 0.25, 128.0, 2.0, 1000.0)
    bar.refresh()
    text = buffer.getvalue()
    assert "40/100" in text and "s_step=0.5" in text and "eta=0:00:30" in text, text
    assert "img_s=128.0" in text and "loss=0.2500" in text
