"""Drafts from a prediction (OpenAI's Predicted Outputs): where the answer stands in the predicted text."""

from __future__ import annotations

from llmhost.engine.ngram import PredictionIndex


def test_the_start_of_the_answer_drafts_the_start_of_the_prediction() -> None:
    index = PredictionIndex([10, 11, 12, 13, 14, 15])
    assert index.draft([10], 3) == [11, 12, 13]
    assert index.draft([10, 11], 8) == [12, 13, 14, 15]
    assert index.draft([99], 3) == []  # another start: nothing to draft from yet


def test_the_answer_is_found_again_after_it_left_the_prediction() -> None:
    index = PredictionIndex([1, 2, 3, 4, 5, 6, 7, 8])
    # An edit: the answer wrote 9 for 4, then went on as predicted.
    assert index.draft([1, 2, 3, 9], 2) == []
    assert index.draft([1, 2, 3, 9, 5, 6, 7], 2) == [8]


def test_a_repeated_passage_keeps_its_place() -> None:
    line = [5, 6, 7, 8]
    index = PredictionIndex([*line, 1, *line, 2, *line, 3])
    assert index.draft(line, 1) == [1]  # the first occurrence
    assert index.draft([*line, 1, *line], 1) == [2]  # the one after where the answer was
    assert index.draft([*line, 1, *line, 2, *line], 1) == [3]


def test_an_empty_prediction_or_room_drafts_nothing() -> None:
    assert PredictionIndex([]).draft([1, 2, 3], 4) == []
    assert PredictionIndex([1, 2, 3]).draft([1], 0) == []
