"""Exports every quiz for a blind measurement: keys hidden, options shuffled (seeded).

Usage, from the repository root:
    python3 xtask/quiz-measure/export.py OUT_DIR
writes OUT_DIR/<chapter>.md (what a quiz taker reads) and OUT_DIR.key.json (the key, for
grade.py; keep it away from the takers). Give one taker the chapters and the .md files, another
only the .md files, and compare their scores: a quiz tests its chapter when the second scores
low and the first high.
"""
import glob, json, os, random, sys, tomllib

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = random.Random(20261203)
key = {}
for path in sorted(glob.glob("book/quizzes/*.toml")):
    chapter = os.path.basename(path)[:-5]
    questions = tomllib.load(open(path, "rb"))["questions"]
    lines = [f"# Quiz: {chapter}\n"]
    key[chapter] = {}
    for n, q in enumerate(questions, 1):
        prompt = q["prompt"]
        lines.append(f"## Q{n} ({q['type']})\n{prompt['prompt'].strip()}\n")
        if q["type"] == "MultipleChoice":
            answer = q["answer"]["answer"]
            several = isinstance(answer, list)
            keyed = answer if several else [answer]
            options = [(o, True) for o in keyed] + [(o, False) for o in prompt["distractors"]]
            rng.shuffle(options)
            lines.append("(Select ALL that apply.)\n" if several else "(Select exactly one.)\n")
            for i, (text, _) in enumerate(options):
                lines.append(f"  {chr(65 + i)}. {text}")
            right = sorted(chr(65 + i) for i, (_, ok) in enumerate(options) if ok)
            key[chapter][str(n)] = {"type": "mc", "correct": right}
        else:
            accepted = [q["answer"]["answer"]] + q["answer"].get("alternatives", [])
            key[chapter][str(n)] = {"type": "short", "correct": accepted}
            lines.append("(Short answer: type the exact text.)")
        lines.append("")
    open(f"{out}/{chapter}.md", "w").write("\n".join(lines))
json.dump(key, open(f"{out}.key.json", "w"), indent=1)
print(f"exported {len(key)} quizzes to {out}/, key in {out}.key.json")
