"""What the scale benchmarks share: the question and the words an answer of T tokens is made of."""

QUESTION = "what color is the circle?"
WORDS = [
    "red",
    "circle",
    "left",
    "of",
    "the",
    "blue",
    "square",
    "and",
    "green",
    "star",
    "near",
    "a",
    "small",
    "yellow",
    "triangle",
]


def answer(length: int) -> str:
    """A teacher-forced answer of ``length`` words (tokens, for the tiny word-level tokenizer)."""
    return " ".join((WORDS * (1 + length // len(WORDS)))[:length])
