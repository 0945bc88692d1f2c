"""How repeat replies fail: classify each episode of `eval`'s transcripts.jsonl files.

    python experiments/002_learning/repeat_diagnosis/classify.py experiments/002_learning/repeat_diagnosis/*.jsonl

Kinds (an episode can have several): exact; too long (more digits than heard); too short; stutter (a digit
said twice in a row where the target has no such pair); "right, then goes on" (the whole string, then more).
"""

import json
import sys
from pathlib import Path


def kinds(target: str, said: str) -> list[str]:
    if said == target:
        return ["exact"]
    out = []
    if len(said) > len(target):
        out.append("too long")
    if len(said) < len(target):
        out.append("too short")
    if any(said[i] == said[i + 1] and said[i] * 2 not in target for i in range(len(said) - 1)):
        out.append("stutter")
    if said.startswith(target):
        out.append("right, then goes on")
    return out


def main(paths: list[str]) -> None:
    names = ["exact", "too long", "too short", "stutter", "right, then goes on"]
    print("| transcripts | episodes | " + " | ".join(names) + " | text digit acc by position 1 / 2 / 3 / 4 |")
    print("|---|---:|" + "---:|" * len(names) + "---|")
    for path in paths:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        rows = [r for r in rows if r["task"] == "repeat"]
        counts = {k: 0 for k in names}
        for r in rows:
            for k in kinds(r["target"], r["said"]):
                counts[k] += 1
        acc = []
        for i in range(4):
            have = [r for r in rows if len(r["target"]) > i]
            acc.append(sum(len(r["said"]) > i and r["said"][i] == r["target"][i] for r in have) / len(have))
        print(f"| {Path(path).stem} | {len(rows)} | " + " | ".join(str(counts[k]) for k in names)
              + " | " + " / ".join(f"{a:.2f}" for a in acc) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
