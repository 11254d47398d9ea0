"""Warming an extractor up (what the server does before it says it is serving) leaves no trace."""

import pytest


@pytest.mark.parametrize("fixture", ["text_extractor", "audio_extractor", "video_extractor"])
def test_warming_up_leaves_no_session_behind(fixture, request):
    extractor = request.getfixturevalue(fixture)
    before = list(extractor.open_sessions)
    extractor.warm()
    assert extractor.open_sessions == before
