"""crypson.progress: the counted, timed log lines of the long steps that are not training."""

import logging

import pytest

from crypson.progress import Progress


def test_each_step_says_its_number_its_time_and_what_is_left():
    lines, now = [], iter([0.0, 1.0, 4.0, 4.0, 10.0])  # started; step 1 from 1 to 4; step 2 from 4 to 10
    progress = Progress("attack", 2, report=lines.append, clock=lambda: next(now))
    with progress.step("keyed-modular: known-model"):
        pass
    with progress.step("keyed-modular: linear-probe"):
        pass
    assert lines == ["attack [1/2] keyed-modular: known-model ...",
                     "attack [1/2] keyed-modular: known-model: 3.0 s, about 4 s left",  # 4 s for one of two
                     "attack [2/2] keyed-modular: linear-probe ...",
                     "attack [2/2] keyed-modular: linear-probe: 6.0 s, all done"]


def test_a_failing_step_reports_no_end_and_more_steps_than_announced_are_refused():
    lines = []
    progress = Progress("corpus", 1, report=lines.append)
    with pytest.raises(RuntimeError), progress.step("report"):
        raise RuntimeError("decryption failed")
    assert lines == ["corpus [1/1] report ..."] and progress.done == 0
    with progress.step("report"):
        pass
    with pytest.raises(ValueError, match="step 'extra' is one more than the 1 announced"):
        with progress.step("extra"):
            pass
    with pytest.raises(ValueError, match="at least one step, got total=0"):
        Progress("empty", 0)


def test_by_default_the_lines_go_to_the_crypson_progress_logger(caplog):
    with caplog.at_level(logging.INFO, logger="crypson.progress"):
        with Progress("latent figures", 1).step("TSNE of 200 latents"):
            pass
    assert [record.getMessage() for record in caplog.records][0] == "latent figures [1/1] TSNE of 200 latents ..."
