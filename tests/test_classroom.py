"""A small class on one server (bench.classroom): three Chromium sessions at once, each with its
own seed, see exactly what a lone session sees, before and after they all move the slider.
The timings are the benchmark's to report (python -m bench.classroom 16), not asserted here."""

from pathlib import Path

import pytest
from conftest import needs_shipped_model

from bench.classroom import CHROMIUM, run

pytestmark = [needs_shipped_model, pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                 reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")]


def test_three_sessions_at_once_see_what_each_sees_alone():
    result = run(3, presses=1)
    print(f"\nclassroom of 3: first text {result['first_text_s']} s, slider {result['slider_s']} s")
    assert result["exceptions"] == 0
    assert result["identical"], result["differences"]
    assert len(result["first_text_s"]) == 3 and len(result["slider_s"]) == 3
