"""Grades a taker's answers against the key export.py wrote, per quiz and per question.

Usage: python3 xtask/quiz-measure/grade.py OUT_DIR.key.json ANSWERS.json
ANSWERS.json: {"<chapter>": {"1": "B", "2": ["A", "C"], "3": "short text"}, ...}. A
multi-select counts only when every box is right; a short answer when it equals one of the
accepted spellings (case and spacing aside).
"""
import json, re, sys

key = json.load(open(sys.argv[1]))
answers = json.load(open(sys.argv[2]))
norm = lambda text: re.sub(r"\s+", " ", str(text).strip().strip("`").lower())
total = right = 0
for chapter in sorted(answers):
    got_right = []
    for n, k in key[chapter].items():
        given = answers[chapter].get(n)
        if given is None:
            continue
        if k["type"] == "mc":
            letters = given if isinstance(given, list) else re.findall(r"[A-Z]", str(given))
            ok = sorted(letters) == k["correct"]
        else:
            ok = any(norm(given) == norm(a) for a in k["correct"])
        if ok:
            got_right.append(f"Q{n}")
    count = len(key[chapter])
    total += count
    right += len(got_right)
    print(f"{chapter:16} {len(got_right)}/{count} = {100 * len(got_right) / count:.0f}%  right: {' '.join(got_right)}")
print(f"{'all':16} {right}/{total} = {100 * right / total:.0f}%")
