#!/usr/bin/env bash
# Installs what scripts/grader_reference.py and scripts/grader_bench.py need.
# The versions are the ones OpenAI lists for its python grader image (nltk 3.9.1,
# rapidfuzz 3.10.1, rouge-score 0.1.2), so fixtures reflect what users see there.
# WordNet 3.0 comes from Debian's wordnet-base (nltk.download needs the open internet);
# it is the same Princeton release that nltk's wordnet corpus packs, laid out the way
# nltk's WordNetCorpusReader expects plus the standard 45-line `lexnames` file.
set -euo pipefail
NLTK_DATA_DIR="${NLTK_DATA:-/tmp/lathe-nltk-data}"
pip install --quiet 'nltk==3.9.1' 'rapidfuzz==3.10.1' 'rouge-score==0.1.2'
if [ ! -f /usr/share/wordnet/index.sense ]; then
  apt-get install -y wordnet-base wordnet-sense-index >/dev/null
fi
wn="$NLTK_DATA_DIR/corpora/wordnet"
mkdir -p "$wn"
for f in /usr/share/wordnet/*; do ln -sf "$f" "$wn/"; done
python3 - "$wn/lexnames" <<'PY'
import sys
names = """adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute
noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group
noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession
noun.process noun.quantity noun.relation noun.shape noun.state noun.substance noun.time
verb.body verb.change verb.cognition verb.communication verb.competition verb.consumption
verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession
verb.social verb.stative verb.weather adj.ppl""".split()
syn = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
with open(sys.argv[1], "w") as f:
    for i, n in enumerate(names):
        f.write(f"{i:02d}\t{n}\t{syn[n.split('.')[0]]}\n")
PY
echo "export NLTK_DATA=$NLTK_DATA_DIR"
