"""GSM8K answer extraction and matching, as lm-eval's filters define them (tasks.md §1.3).

Run: pytest tests/test_scorers.py
"""

from __future__ import annotations

import pytest

from dleval.scorers import GSM8K_COT_STRICT, GSM8K_STRICT, INVALID, boxed_extract, cut_at_stops, exact_match, gsm8k_extract

REFERENCE = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72"


@pytest.mark.parametrize(
    "text,strict,flexible",
    [
        ("She has 3 + 4 = 7 apples.\n#### 7", "7", "7"),
        ("#### 1,000 dollars", "1,000", "1,000"),
        ("#### -5", "-5", "-5"),
        ("The total is 12 and then 15", INVALID, "15"),
        ("#### 18.00", "18.00", "18.00"),
        ("costs $1,450,000 in total", INVALID, "$1,450,000"),
        ("#### 5\nbut really 6", "5", "6"),
        ("no numbers here", INVALID, INVALID),
        ("answer: 7.", INVALID, "7."),  # the 2+ char alternative wins and keeps the period
        ("#### 3 #### 4", "3", "4"),
    ],
)
def test_gsm8k_filters(text, strict, flexible):
    got = gsm8k_extract(text, ["strict-match", "flexible-extract"])
    assert got == {"strict-match": strict, "flexible-extract": flexible}


@pytest.mark.parametrize(
    "prediction,reference,equal",
    [
        ("72", REFERENCE, True),
        ("1,000", "#### 1000", True),
        ("$72", "#### 72", True),
        ("72.", "#### 72", True),
        ("18.00", "#### 18", False),
        ("[invalid]", "#### 72", False),
        ("-5", "#### -5", True),
    ],
)
def test_exact_match_normalisation(prediction, reference, equal):
    assert exact_match(prediction, reference) is equal


def test_cot_strict_needs_one_character_after_the_number():
    assert gsm8k_extract("So The answer is 42.", ["strict-match"], GSM8K_COT_STRICT)["strict-match"] == "42"
    assert gsm8k_extract("So The answer is 42", ["strict-match"], GSM8K_COT_STRICT)["strict-match"] == "4"


def test_boxed_filter():
    assert boxed_extract(r"so \boxed{3} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert boxed_extract("nothing") == INVALID
    assert gsm8k_extract(r"The answer is \boxed{18}.", ["boxed"])["boxed"] == "18"


def test_cut_at_stops_takes_the_earliest():
    assert cut_at_stops("abc Question: x Q: y", ["Q:", "Question:"]) == "abc "
    assert cut_at_stops("abc", []) == "abc"
    assert cut_at_stops("abc", [""]) == "abc"


def test_default_strict_pattern_is_lm_eval_gsm8k():
    assert GSM8K_STRICT == r"#### (\-?[0-9\.\,]+)"
