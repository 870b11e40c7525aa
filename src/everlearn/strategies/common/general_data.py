"""A small built-in general instruction set for ``general_mix`` when no corpus path is given.

Sixty short, diverse instruction/answer pairs (arithmetic, science, geography, language,
everyday reasoning, writing, code), written for this package. They stand in for the general
data that domain-adaptive pre-training mixes in; a real run should point ``general_mix.path``
at a larger general corpus.
"""

from __future__ import annotations

from everlearn.data.records import Record

GENERAL_PAIRS: list[tuple[str, str]] = [
    ("What is 7 times 8?", "7 times 8 is 56."),
    ("What is 15 plus 27?", "15 plus 27 is 42."),
    ("What is 100 minus 37?", "100 minus 37 is 63."),
    ("What is half of 90?", "Half of 90 is 45."),
    ("Is 17 a prime number?", "Yes. 17 is only divisible by 1 and itself."),
    ("What is 25 percent of 80?", "25 percent of 80 is 20."),
    ("How many minutes are in three hours?", "There are 180 minutes in three hours."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("How many centimetres are in a metre?", "There are 100 centimetres in a metre."),
    ("Convert 2 kilograms to grams.", "2 kilograms is 2000 grams."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("On which continent is Kenya?", "Kenya is in Africa."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean."),
    ("Which river flows through Cairo?", "The Nile flows through Cairo."),
    ("What is the longest river in South America?", "The Amazon is the longest river in "
     "South America."),
    ("What is the chemical formula of water?", "The chemical formula of water is H2O."),
    ("What gas do plants take in for photosynthesis?", "Plants take in carbon dioxide."),
    ("At what temperature does water boil at sea level?",
     "Water boils at 100 degrees Celsius at sea level."),
    ("What planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet."),
    ("What force keeps the planets in orbit around the Sun?", "Gravity keeps them in orbit."),
    ("What organ pumps blood through the human body?", "The heart pumps blood."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What do bees make from nectar?", "Bees make honey from nectar."),
    ("Is a whale a fish or a mammal?", "A whale is a mammal."),
    ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 degrees "
     "Fahrenheit."),
    ("What is the opposite of 'ancient'?", "The opposite of 'ancient' is 'modern'."),
    ("Give a synonym for 'happy'.", "A synonym for 'happy' is 'cheerful'."),
    ("What is the plural of 'mouse'?", "The plural of 'mouse' is 'mice'."),
    ("What is the past tense of 'run'?", "The past tense of 'run' is 'ran'."),
    ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'."),
    ("Translate 'good morning' into French.", "'Good morning' in French is 'bonjour'."),
    ("Correct the sentence: 'She go to school every day.'",
     "She goes to school every day."),
    ("Is this sentence positive or negative: 'I loved the film.'", "Positive."),
    ("Is this sentence positive or negative: 'The food was cold and bland.'", "Negative."),
    ("Put these words in alphabetical order: pear, apple, mango.", "apple, mango, pear"),
    ("How many vowels are in the word 'education'?", "'Education' has five vowels: e, u, a, "
     "i, o."),
    ("Spell the word 'necessary' backwards.", "yrassecen"),
    ("Summarise in one sentence: The meeting was moved from Monday to Wednesday because the "
     "manager was travelling.", "The meeting moved to Wednesday because the manager was away."),
    ("Write a short title for a story about a lost dog finding its way home.",
     "The Long Way Home"),
    ("Write a one-line thank-you note to a friend who helped you move.",
     "Thank you so much for helping me move; I could not have done it without you!"),
    ("Suggest a name for a small bakery.", "The Golden Crust"),
    ("If it is raining, what should you take when you go outside?", "Take an umbrella or a "
     "raincoat."),
    ("Which is heavier, a kilogram of feathers or a kilogram of iron?",
     "They weigh the same: one kilogram each."),
    ("If today is Monday, what day is it in three days?", "It will be Thursday."),
    ("Tom is taller than Ann, and Ann is taller than Bo. Who is the shortest?",
     "Bo is the shortest."),
    ("What comes next in the sequence 2, 4, 8, 16?", "32 comes next; each number doubles."),
    ("Why do we wear seat belts?", "Seat belts keep people in their seats and reduce injuries "
     "in a crash."),
    ("Name three primary colours.", "Red, blue and yellow."),
    ("What is the main ingredient of guacamole?", "Avocado is the main ingredient."),
    ("Who wrote 'Romeo and Juliet'?", "William Shakespeare wrote 'Romeo and Juliet'."),
    ("In which year did the first person walk on the Moon?",
     "The first Moon walk was in 1969."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("Write a Python expression that adds 3 and 4.", "3 + 4"),
    ("What does the Python function len return for the list [1, 2, 3]?", "It returns 3."),
    ("Write a Python function that returns the square of a number.",
     "def square(x):\n    return x * x"),
    ("What does HTML stand for?", "HTML stands for HyperText Markup Language."),
    ("What is the binary representation of the number 5?", "5 in binary is 101."),
]


def general_records(task: str = "general") -> list[Record]:
    """The built-in pairs as instruction records tagged ``task``."""
    return [Record(prompt=p, answers=[a], task=task, meta={"id": f"general-{i}"})
            for i, (p, a) in enumerate(GENERAL_PAIRS)]
