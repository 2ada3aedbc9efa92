"""The prompts tools/bench_verification.py asks: user-like code, prose and chat (Gemma's turn
format), interleaved so that the first N of them mix the three kinds."""

from __future__ import annotations

CODE = [
    'def merge_sorted(a, b):\n    """Merge two sorted lists into one sorted list."""\n',
    "// A C function that reverses a string in place\nvoid reverse(char *s) {\n",
    "SELECT customers.name, COUNT(orders.id) AS n_orders\nFROM customers\n",
    "import json\n\ndef load_config(path):\n    # Read the JSON config file and validate it\n",
]
PROSE = [
    "The history of the printing press begins in the fifteenth century, when",
    "Photosynthesis is the process by which plants",
    "In the small village at the foot of the mountains, the winter of that year",
    "Here are five tips for getting better sleep:\n1.",
]
CHAT = [
    "<start_of_turn>user\nHow do I bake a simple loaf of bread at home?<end_of_turn>\n"
    "<start_of_turn>model\n",
    "<start_of_turn>user\nExplain what a hash table is to a beginner.<end_of_turn>\n"
    "<start_of_turn>model\n",
    "<start_of_turn>user\nWrite a short, polite email asking my landlord to fix the heating."
    "<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nWhat are the main causes of inflation?<end_of_turn>\n"
    "<start_of_turn>model\n",
]
# Interleaved, so that the first N prompts (--prompts, --quick) mix the three kinds.
PROMPTS = [
    (kind, prompt)
    for trio_ in zip(CODE, PROSE, CHAT, strict=True)
    for kind, prompt in zip(("code", "prose", "chat"), trio_, strict=True)
]

# More prompts for tools/bench_campaign.py (a long honest campaign wants more than 12 kinds of
# text); kept apart so that PROMPTS, and the other benches' "first N", mean what they did.
MORE_CODE = [
    "#!/usr/bin/env bash\n# Back up every .conf file under /etc into a dated tar archive\n",
    "class LRUCache:\n    def __init__(self, capacity: int):\n",
    "fn parse_port(s: &str) -> Result<u16, String> {\n",
    "<!-- A login form with an email field, a password field and a submit button -->\n<form",
]
MORE_PROSE = [
    "The old lighthouse keeper climbed the stairs one last time, knowing that",
    "Volcanoes form where molten rock from deep inside the Earth",
    "Dear members of the hiking club, this month's trip will take us",
    "The three most common mistakes new gardeners make are",
]
MORE_CHAT = [
    "<start_of_turn>user\nWhat is the difference between a virus and a bacterium?<end_of_turn>\n"
    "<start_of_turn>model\n",
    "<start_of_turn>user\nGive me a packing list for a weekend camping trip.<end_of_turn>\n"
    "<start_of_turn>model\n",
    "<start_of_turn>user\nHow can I explain fractions to a seven-year-old?<end_of_turn>\n"
    "<start_of_turn>model\n",
    "<start_of_turn>user\nTranslate 'Where is the train station?' into French and Spanish."
    "<end_of_turn>\n<start_of_turn>model\n",
]
CAMPAIGN_PROMPTS = PROMPTS + [
    (kind, prompt)
    for trio_ in zip(MORE_CODE, MORE_PROSE, MORE_CHAT, strict=True)
    for kind, prompt in zip(("code", "prose", "chat"), trio_, strict=True)
]
