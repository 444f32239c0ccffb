"""The word lists the task generators draw from, written for this package (no downloads).

Every entry is a plain word; the generators prepend the space a BPE tokenizer needs (" Mary")
and keep only the words that are one token for the tokenizer they are given.
"""

from __future__ import annotations

__all__ = ["COUNTRIES", "INDUCTION_WORDS", "IOI_OBJECTS", "IOI_PLACES", "IOI_TEMPLATES", "NAMES"]

NAMES = (
    "Mary", "John", "Anna", "James", "Sarah", "David", "Emma", "Michael", "Laura", "Robert",
    "Kate", "Paul", "Lisa", "Mark", "Susan", "Peter", "Alice", "Tom", "Julia", "Daniel",
    "Rachel", "Steven", "Helen", "George", "Amy", "Richard", "Karen", "Thomas", "Linda", "Kevin",
    "Emily", "Brian", "Grace", "Jason", "Nancy", "Adam", "Rose", "Eric", "Jane", "Frank",
    "Sophie", "Henry", "Claire", "Jack", "Lucy", "Martin", "Ruth", "Simon",
)  # fmt: skip
"""First names for IOI (clean names A, B; corrupted names C, D, E)."""

IOI_TEMPLATES = (
    "When {A} and {B} went to the {place}, {B} gave a {object} to",
    "While {A} and {B} were at the {place}, {B} handed a {object} to",
    "After {A} and {B} arrived at the {place}, {B} passed a {object} to",
    "Once {A} and {B} got to the {place}, {B} threw a {object} to",
)
"""IOI sentence frames: ``{A}`` is the indirect object (the answer), ``{B}`` the subject
(named twice; the distractor). The generator also uses each frame with the first two names
swapped (BABA order). With one-token names, places and objects the frames have the same token
count, so prompts of every frame fit one ``(N, T)`` tensor."""

IOI_PLACES = (
    "store", "park", "office", "beach", "school", "market", "garden", "station", "hospital",
    "library", "restaurant", "church", "house", "river", "lake", "bank",
)  # fmt: skip
"""Places for the IOI frames."""

IOI_OBJECTS = (
    "drink", "ball", "book", "gift", "letter", "snack", "bag", "card", "cup", "hat", "key",
    "pen", "ring", "toy", "note", "box",
)  # fmt: skip
"""Objects (each taking the article "a") for the IOI frames."""

COUNTRIES = (
    # country, capital, language ("" where the language is shared or ambiguous)
    ("France", "Paris", "French"),
    ("Germany", "Berlin", "German"),
    ("Spain", "Madrid", "Spanish"),
    ("Italy", "Rome", "Italian"),
    ("Japan", "Tokyo", "Japanese"),
    ("China", "Beijing", "Chinese"),
    ("Russia", "Moscow", "Russian"),
    ("Greece", "Athens", "Greek"),
    ("Egypt", "Cairo", "Arabic"),
    ("Portugal", "Lisbon", "Portuguese"),
    ("Poland", "Warsaw", "Polish"),
    ("England", "London", "English"),
    ("Sweden", "Stockholm", "Swedish"),
    ("Turkey", "Ankara", "Turkish"),
    ("Norway", "Oslo", "Norwegian"),
    ("Hungary", "Budapest", "Hungarian"),
    ("Finland", "Helsinki", "Finnish"),
    ("Denmark", "Copenhagen", "Danish"),
    ("Austria", "Vienna", ""),
    ("Ireland", "Dublin", ""),
    ("Thailand", "Bangkok", "Thai"),
    ("Vietnam", "Hanoi", "Vietnamese"),
    ("Iran", "Tehran", "Persian"),
    ("Kenya", "Nairobi", "Swahili"),
    ("Peru", "Lima", ""),
    ("Cuba", "Havana", ""),
    ("Canada", "Ottawa", ""),
    ("Australia", "Canberra", ""),
)
"""Countries with their capital and main language, for factual recall."""

INDUCTION_WORDS = (
    "apple", "river", "chair", "window", "garden", "pencil", "mountain", "coffee", "doctor",
    "engine", "forest", "guitar", "island", "jacket", "kitchen", "lemon", "mirror", "needle",
    "orange", "pepper", "queen", "rocket", "silver", "tiger", "umbrella", "valley", "wallet",
    "yellow", "zebra", "anchor", "bottle", "candle", "desert", "eagle", "feather", "ginger",
    "hammer", "ivory", "jungle", "kettle", "ladder", "marble", "nickel", "oyster", "pillow",
    "rabbit", "saddle", "tunnel", "violin", "wizard", "basket", "castle", "dragon", "planet",
    "butter", "cotton", "dinner", "finger", "monkey", "pocket", "shadow", "winter", "carpet",
    "button", "cheese", "circle", "cloud", "copper", "crystal", "flower", "horse", "lamp",
    "ocean", "paper", "piano", "salt", "snow", "stone", "sugar", "table", "train", "water",
)  # fmt: skip
"""Common nouns: the random tokens of the induction task."""
