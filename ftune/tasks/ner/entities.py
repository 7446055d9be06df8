"""Tagged words grouped into entities, as `ftune predict` prints them.

The rule is the one the transformers `token-classification` pipeline applies with
`aggregation_strategy="simple"`, here over words instead of sub-tokens: a word joins the entity before it when
it has the same entity type and its tag does not begin an entity (B-); "O" words belong to no entity; a bare tag
without a prefix ("PER") reads as a continuation (I-PER). An entity's score is the mean of its words' scores,
its start and end are the characters of its first and last word. Beyond the pipeline, BIOES tags are understood:
S- begins (and ends) an entity like B-, E- continues one, and nothing joins an entity after its E- or S- word.
"""

from __future__ import annotations

from typing import Any, Optional

OUTSIDE = "O"
BEGINS = ("B", "S")          # a tag with this prefix starts a new entity
ENDS = ("E", "S")            # after a tag with this prefix, the entity is closed
PREFIXES = ("B", "I", "E", "S")


def split_tag(tag: str) -> tuple[Optional[str], Optional[str]]:
    """(prefix, entity type) of a tag: (None, None) for O; a bare tag is a continuation ("I", tag)."""
    if tag == OUTSIDE:
        return None, None
    prefix, sep, kind = tag.partition("-")
    if sep and prefix in PREFIXES and kind:
        return prefix, kind
    return "I", tag


def group_entities(text: str, tags: list[str], scores: list[float],
                   spans: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Entities of one input: {type, text, start, end, score}, from each word's tag, score and character span
    in `text`."""
    groups: list[list[int]] = []
    previous: tuple[Optional[str], Optional[str]] = (None, None)
    for i, tag in enumerate(tags):
        prefix, kind = split_tag(tag)
        if kind is None:
            previous = (None, None)
            continue
        joins = groups and kind == previous[1] and prefix not in BEGINS and previous[0] not in ENDS
        if joins:
            groups[-1].append(i)
        else:
            groups.append([i])
        previous = (prefix, kind)
    entities = []
    for words in groups:
        start, end = spans[words[0]][0], spans[words[-1]][1]
        entities.append({"type": split_tag(tags[words[0]])[1], "text": text[start:end], "start": start, "end": end,
                         "score": sum(scores[i] for i in words) / len(words)})
    return entities
