"""Builds src/graders/similarity/wordnet_syn.txt from nltk's WordNet reader.

METEOR's synonym stage (nltk.translate.meteor_score._enum_wordnetsyn_match) only needs,
for a word w, the set of underscore-free lemma names of every synset that
wordnet.synsets(w) returns. That depends on the index (which lemma/pos pairs exist),
the exception lists and morphy's suffix rules (implemented in Rust), so the table keeps:

  G <names...>             one synonym group per line (deduplicated), numbered from 0
  I <lemma> <pos> <ids...> index entries whose synsets contribute at least one name
  X <pos> <form> <bases...> every exception entry (its mere presence disables morphy's rules)

Run after scripts/setup_reference_env.sh with NLTK_DATA set.
"""
import sys
from nltk.corpus import wordnet as wn

out_path = sys.argv[1] if len(sys.argv) > 1 else "src/graders/similarity/wordnet_syn.txt"
POS = ["n", "v", "a", "r"]
groups, group_ids, index_lines = [], {}, []
for pos in POS:
    for lemma in sorted(wn._lemma_pos_offset_map):
        offsets = wn._lemma_pos_offset_map[lemma].get(pos)
        if not offsets:
            continue
        ids = []
        for off in offsets:
            names = tuple(sorted({l.name() for l in wn.synset_from_pos_and_offset(pos, off).lemmas() if "_" not in l.name()}))
            if not names:
                continue
            gid = group_ids.get(names)
            if gid is None:
                gid = group_ids[names] = len(groups)
                groups.append(names)
            if gid not in ids:
                ids.append(gid)
        if ids:
            index_lines.append(f"I {lemma} {pos} {' '.join(map(str, ids))}")
useful = {(l.split()[1], l.split()[2]) for l in index_lines}
exc_lines = []
for pos in POS:
    for form, bases in sorted(wn._exception_map[pos].items()):
        kept = [b for b in bases if (b, pos) in useful]
        exc_lines.append(" ".join(["X", pos, form] + kept))
with open(out_path, "w") as f:
    f.write("# Derived from WordNet 3.0 (c) 2006 Princeton University; see WORDNET_LICENSE.\n")
    for g in groups:
        f.write("G " + " ".join(g) + "\n")
    for l in index_lines + exc_lines:
        f.write(l + "\n")
print(len(groups), "groups", len(index_lines), "index", len(exc_lines), "exceptions", file=sys.stderr)
