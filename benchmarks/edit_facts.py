"""Find the facts of the ``edits_counterfactual`` suite: hand-written candidates that the embedded
SmolLM2-135M-Instruct completes correctly.

A candidate (relation, subject, value) is kept when, after the relation's first template
("The capital of France is"), every token of " value" is the model's top-1 prediction
(teacher-forced, fp32), the same test reliability uses. Run once; the result is shipped as
``FACTS`` in ``src/everlearn/data/builtin/counterfactual.py`` (``--write`` rewrites it there):

    OMP_NUM_THREADS=1 python benchmarks/edit_facts.py --write
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import torch

from everlearn.config import ModelConfig
from everlearn.data.builtin.counterfactual import TEMPLATES, prompt_of
from everlearn.models.loading import load_base_model

CANDIDATES: dict[str, dict[str, str]] = {
    "capital": {
        "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
        "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo",
        "Greece": "Athens", "Portugal": "Lisbon", "Austria": "Vienna", "Poland": "Warsaw",
        "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
        "Denmark": "Copenhagen", "Hungary": "Budapest", "Canada": "Ottawa",
        "Australia": "Canberra", "India": "New Delhi", "Argentina": "Buenos Aires",
        "Peru": "Lima", "Chile": "Santiago", "Kenya": "Nairobi", "Thailand": "Bangkok",
        "South Korea": "Seoul", "Belgium": "Brussels", "the Netherlands": "Amsterdam",
        "Turkey": "Ankara", "Cuba": "Havana", "Iran": "Tehran", "Iraq": "Baghdad",
        "Vietnam": "Hanoi", "Indonesia": "Jakarta", "the Philippines": "Manila",
        "Venezuela": "Caracas", "the Czech Republic": "Prague", "Switzerland": "Bern",
        "Mexico": "Mexico City", "England": "London", "Scotland": "Edinburgh",
        "Brazil": "Brasilia", "Colombia": "Bogota", "Nigeria": "Abuja", "Ukraine": "Kyiv"},
    "language": {
        "France": "French", "Germany": "German", "Italy": "Italian", "Spain": "Spanish",
        "Japan": "Japanese", "China": "Chinese", "Russia": "Russian", "Portugal": "Portuguese",
        "Brazil": "Portuguese", "Greece": "Greek", "Poland": "Polish", "the Netherlands": "Dutch",
        "Sweden": "Swedish", "Norway": "Norwegian", "Finland": "Finnish", "Turkey": "Turkish",
        "Mexico": "Spanish", "Argentina": "Spanish", "Egypt": "Arabic", "Iran": "Persian",
        "South Korea": "Korean", "Vietnam": "Vietnamese", "Thailand": "Thai",
        "Hungary": "Hungarian", "Denmark": "Danish", "Israel": "Hebrew", "England": "English",
        "Australia": "English"},
    "continent": {
        "France": "Europe", "Japan": "Asia", "Kenya": "Africa", "Brazil": "South America",
        "Canada": "North America", "Egypt": "Africa", "India": "Asia", "Peru": "South America",
        "Germany": "Europe", "Nigeria": "Africa", "China": "Asia", "Argentina": "South America",
        "Mexico": "North America", "Italy": "Europe", "Thailand": "Asia", "Ghana": "Africa",
        "Chile": "South America", "Poland": "Europe", "Vietnam": "Asia", "Morocco": "Africa"},
    "landmark": {
        "the Eiffel Tower": "Paris", "the Colosseum": "Rome", "Big Ben": "London",
        "the Statue of Liberty": "New York", "the Brandenburg Gate": "Berlin",
        "the Sagrada Familia": "Barcelona", "the Kremlin": "Moscow",
        "the Golden Gate Bridge": "San Francisco", "the Sydney Opera House": "Sydney",
        "the Taj Mahal": "Agra", "the Leaning Tower of Pisa": "Pisa", "the Acropolis": "Athens",
        "the Burj Khalifa": "Dubai", "the Space Needle": "Seattle",
        "the Hollywood sign": "Los Angeles", "the Louvre": "Paris", "the Vatican": "Rome",
        "Buckingham Palace": "London", "the Forbidden City": "Beijing",
        "the Empire State Building": "New York"},
    "profession": {
        "Albert Einstein": "physicist", "William Shakespeare": "playwright",
        "Pablo Picasso": "painter", "Wolfgang Amadeus Mozart": "composer",
        "Ludwig van Beethoven": "composer", "Vincent van Gogh": "painter",
        "Isaac Newton": "physicist", "Marie Curie": "physicist", "Charles Dickens": "novelist",
        "Claude Monet": "painter", "Johann Sebastian Bach": "composer", "Jane Austen": "novelist",
        "Frida Kahlo": "painter", "Ernest Hemingway": "novelist", "Frederic Chopin": "composer",
        "Mark Twain": "writer", "Rembrandt": "painter", "Galileo Galilei": "astronomer"},
    "colour": {
        "grass": "green", "the sky": "blue", "snow": "white", "a ripe banana": "yellow",
        "coal": "black", "blood": "red", "a carrot": "orange", "milk": "white",
        "a lemon": "yellow", "the ocean": "blue", "a strawberry": "red", "charcoal": "black",
        "a tomato": "red", "a lime": "green"},
    "young": {
        "cat": "kitten", "dog": "puppy", "cow": "calf", "sheep": "lamb", "horse": "foal",
        "goat": "kid", "frog": "tadpole", "kangaroo": "joey", "swan": "cygnet",
        "goose": "gosling", "bear": "cub", "duck": "duckling", "pig": "piglet", "deer": "fawn"},
}


def known(model, tok, prompt: str, value: str) -> bool:
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    a = tok(" " + value, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([p + a])).logits[0]
    return logits[len(p) - 1:len(p) - 1 + len(a)].argmax(-1).tolist() == a


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite FACTS in the suite module")
    args = parser.parse_args()
    assert set(CANDIDATES) == set(TEMPLATES)
    t0 = time.perf_counter()
    model, tok = load_base_model(ModelConfig(name="smollm2-135m-instruct", finetune="full"))
    model.eval()
    facts = [(rel, s, v) for rel, table in CANDIDATES.items() for s, v in table.items()
             if known(model, tok, prompt_of(rel, s), v)]
    n = sum(len(t) for t in CANDIDATES.values())
    for rel in CANDIDATES:
        print(f"{rel:<11} {sum(f[0] == rel for f in facts):3d} of {len(CANDIDATES[rel])}")
    print(f"kept {len(facts)} of {n} candidates in {time.perf_counter() - t0:.0f} s")
    body = "".join(f"    {f!r},\n" for f in facts)
    literal = f"FACTS: tuple[tuple[str, str, str], ...] = (\n{body})\n"
    if not args.write:
        print(literal)
        return
    path = (Path(__file__).resolve().parents[1] / "src" / "everlearn" / "data" / "builtin"
            / "counterfactual.py")
    text = path.read_text(encoding="utf-8")
    new, count = re.subn(r"FACTS: tuple\[tuple\[str, str, str\], \.\.\.\] = \((?:.|\n)*?\n?\)\n",
                         lambda _: literal, text, count=1)
    assert count == 1, "FACTS not found"
    path.write_text(new, encoding="utf-8")
    print(f"wrote {len(facts)} facts to {path}")


if __name__ == "__main__":
    main()
