"""Question types from our own keyword lists, for the accuracy-by-type table of `pipeline evaluate`.

A question gets the first type in QUESTION_TYPES whose keywords it contains (attributes before entities, so
"is it the red car?" is a color question), else "other". Words match whole, with plural -s/-es; multi-word
keywords ("next to", "traffic light") match as phrases; digits count as numbers. Words in two lists go to the
earlier type ("orange" is a color).

    question_type("Is it the one on the left?")   # "location" ("one" is a pronoun here, not a number)
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z]+|[0-9]+")

COLOR = """red blue green yellow white black brown orange pink purple violet grey gray silver gold golden
    beige tan navy maroon teal turquoise cream colored coloured color colour colorful colourful dark
    bright blond blonde"""
SHAPE = """round square rectangular rectangle circle circular triangle triangular oval shape shaped
    curved curvy cylinder cylindrical sphere spherical pointy pointed straight flat"""
SIZE = """big bigger biggest small smaller smallest large larger largest little tiny huge giant tall
    taller tallest short shorter shortest long longer longest size sized wide narrow thin thick fat
    medium"""
TEXTURE = """wooden wood metal metallic plastic fabric leather striped stripes stripe spotted dotted
    checkered plaid patterned pattern furry fluffy shiny soft hard texture material paper cloth ceramic
    stone brick"""
ACTION = """standing sitting walking running holding eating riding playing looking wearing facing lying
    laying flying jumping driving moving parked swinging hitting throwing catching drinking talking
    smiling reading skiing surfing skating carrying pulling pushing sleeping grazing crossing waiting
    cooking cutting"""
LOCATION = """left right middle center centre front behind back background foreground top bottom corner
    edge side near nearest closest close closer far farther farthest furthest next beside besides between
    above below under underneath upper lower outside inside against end row
    ;next to;in front;on top"""
NUMBER = """two three four five six seven eight nine ten first second third fourth fifth last only
    alone single pair both number count many several group"""
# COCO category names (person is a super-category here) and common single-word heads of the two-word ones.
OBJECT = """bicycle bike car motorcycle motorbike airplane plane bus train truck boat bench bird cat dog
    horse sheep cow elephant bear zebra giraffe backpack umbrella handbag bag tie suitcase frisbee skis
    snowboard ball kite bat glove skateboard surfboard racket racquet bottle glass cup fork knife spoon
    bowl banana apple sandwich orange broccoli carrot pizza donut doughnut cake chair couch sofa bed
    table toilet tv television laptop mouse remote keyboard phone microwave oven toaster sink
    refrigerator fridge book clock vase scissors hydrant plant dryer toothbrush
    ;traffic light;fire hydrant;stop sign;parking meter;sports ball;baseball bat;baseball glove
    ;tennis racket;wine glass;hot dog;potted plant;dining table;cell phone;teddy bear;hair drier"""
SUPER_CATEGORY = """person people human man men woman women guy lady boy girl child children kid player
    animal vehicle food furniture appliance electronic electronics accessory accessories kitchen utensil
    sports outdoor indoor fruit vegetable clothing clothes shorts pants jeans shirt jacket coat hat device dish
    drink"""

QUESTION_TYPES = (
    "color",
    "shape",
    "size",
    "texture",
    "action",
    "location",
    "number",
    "object",
    "super-category",
)
OTHER = "other"


def _keywords(spec: str) -> tuple[frozenset[str], tuple[str, ...]]:
    """'word word;multi word;...' → (single words, phrases padded with spaces for whole-word matching)."""
    words, *phrases = spec.split(";")
    return frozenset(words.split()), tuple(" " + " ".join(phrase.split()) + " " for phrase in phrases)


_KEYWORDS = {
    name: _keywords(spec)
    for name, spec in zip(
        QUESTION_TYPES,
        (COLOR, SHAPE, SIZE, TEXTURE, ACTION, LOCATION, NUMBER, OBJECT, SUPER_CATEGORY),
        strict=True,
    )
}


_KNOWN = frozenset().union(*(words for words, _ in _KEYWORDS.values()))


def _singular(token: str) -> tuple[str, ...]:
    if token in _KNOWN:  # "clothes" is not "cloth", "shorts" not "short"
        return (token,)
    forms = [token]
    if token.endswith("es"):
        forms.append(token[:-2])
    if token.endswith("s"):
        forms.append(token[:-1])
    return tuple(forms)


def question_type(question: str) -> str:
    """The first matching type of QUESTION_TYPES, or "other"."""
    tokens = _WORD.findall(question.casefold())
    forms = {form for token in tokens for form in _singular(token)}
    text = " " + " ".join(tokens) + " "
    for name, (words, phrases) in _KEYWORDS.items():
        if forms & words or any(phrase in text for phrase in phrases):
            return name
        if name == "number" and any(token.isdigit() for token in tokens):
            return name
    return OTHER
