#!/usr/bin/env bash
# Sample multi-turn chat transcripts from the model itself, for the indexer warm-up corpus.
#
#   scripts/corpus/sample-chats.sh [--chats N] [--turns T] [-n TOKENS] [--temp T] [--seed BASE]
#                                  [--out DIR] [--dsa BIN] [--model FILE] [--system TEXT] [--threads N] [--force]
#
# Each conversation c (0..N-1) uses seed BASE+c: it picks an opening question and follow-ups from the fixed
# lists below, and for every turn runs `dsa generate -` on the whole conversation so far, rendered in the
# model's ChatML template (system, user, assistant turns), with --seed BASE+c, --temp and -n.  The finished
# conversation is saved, exactly as the template renders it, as one document:
#     DIR/train/chat-NNNN.txt, or DIR/heldout/chat-NNNN.txt for every conversation with c % 8 == 3.
# DIR/chats.tsv records how each was made; an existing transcript made with the same settings is kept
# (use --force to sample it again).  Transcripts of an earlier run beyond N are removed.  Finally
# MANIFEST.tsv is refreshed (scripts/corpus/make-corpus.py --manifest-only).
#
# Defaults: 24 conversations x 4 turns, -n 160, --temp 0.7, seed 1000, one thread (about 4 minutes).
# The transcripts are deterministic: same binary, model and options -> the same text.
# Needs the ChatML template (SmolLM2, Qwen2.x); the default system prompt is SmolLM2's.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"

chats=24 turns=4 ntok=160 temp=0.7 seed=1000 threads=1 force=0 model="" dsa="${DSA:-}"
system="You are a helpful AI assistant named SmolLM, trained by Hugging Face"
out="${DSACHAT_CORPUS:-${XDG_CACHE_HOME:-$HOME/.cache}/dsachat/corpus}"
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --chats) chats="$2"; shift 2 ;;
    --turns) turns="$2"; shift 2 ;;
    -n) ntok="$2"; shift 2 ;;
    --temp) temp="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --dsa) dsa="$2"; shift 2 ;;
    --model|-m) model="$2"; shift 2 ;;
    --system) system="$2"; shift 2 ;;
    --threads|-t) threads="$2"; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "sample-chats: unknown option $1" >&2; usage 2 >&2 ;;
  esac
done

# the dsa binary: --dsa / $DSA, else the build tree, else build it
if [ -z "$dsa" ]; then
  for c in "$root/build/dsa" "$root/build/tools/dsa"; do
    [ -x "$c" ] && { dsa="$c"; break; }
  done
fi
if [ -z "$dsa" ]; then
  echo "sample-chats: building dsa (scripts/build.sh)" >&2
  bash "$root/scripts/build.sh" >&2
  for c in "$root/build/dsa" "$root/build/tools/dsa"; do
    [ -x "$c" ] && { dsa="$c"; break; }
  done
  [ -n "$dsa" ] || { echo "sample-chats: no dsa binary after the build" >&2; exit 1; }
fi
margs=(--threads "$threads")
[ -n "$model" ] && margs+=(--model "$model")

tmpl=$("$dsa" "${margs[@]}" info 2>/dev/null | awk '$1=="chat"{print $2}')
if [ "$tmpl" != "chatml" ]; then
  echo "sample-chats: the model's chat template is '${tmpl:-unknown}', only chatml is supported" >&2
  exit 1
fi
modelname=$("$dsa" "${margs[@]}" info 2>/dev/null | awk '$1=="model"{print $2}')
modelid="$(basename "$modelname"):$(stat -c %s "$modelname" 2>/dev/null || echo '?')"

# The opening questions and the follow-ups (one line each).
openers=(
  "What is a hash table, and why are lookups usually fast?"
  "Explain how photosynthesis works in simple terms."
  "Why is the sky blue?"
  "How do vaccines train the immune system?"
  "What is the difference between a process and a thread?"
  "Can you explain recursion with a short example?"
  "What causes the seasons on Earth?"
  "How does a bicycle stay upright when it moves?"
  "What were the main causes of the First World War?"
  "Give me some tips for writing a clear email to a colleague."
  "How does compound interest work?"
  "What is the difference between weather and climate?"
  "Explain what a black hole is."
  "How do I make a simple tomato soup?"
  "What is machine learning, in a few sentences?"
  "Why do cats purr?"
  "How does a refrigerator keep food cold?"
  "What is the Pythagorean theorem and where is it used?"
  "Write a short poem about autumn leaves."
  "What are good habits for getting better sleep?"
  "How does the internet route a message from one computer to another?"
  "What is inflation, and why do prices rise over time?"
  "Summarize the plot of Romeo and Juliet."
  "What is the difference between a virus and a bacterium?"
  "How do I start learning to play the guitar?"
  "Explain what DNA does in a cell."
  "Why do we have leap years?"
  "What should I consider when adopting a dog?"
  "How does a compiler turn source code into a program?"
  "What are the planets of the solar system, in order from the Sun?"
  "Tell me a short story about a robot who learns to paint."
  "How can I stay focused while studying?"
  "What is the greenhouse effect?"
  "Explain the difference between RAM and a hard disk."
  "Why does ice float on water?"
  "How do bees make honey?"
  "What is a good way to learn a new language as an adult?"
  "How does a sorting algorithm like quicksort work?"
  "What is democracy, and how did it begin?"
  "Plan a simple three-day trip to a city by the sea."
)
followups=(
  "Can you give me a concrete example?"
  "Can you explain that more simply, as if I were ten years old?"
  "Why is that?"
  "What are the most common misconceptions about this?"
  "Can you summarize your answer in three bullet points?"
  "How would you explain this to an expert instead?"
  "What are the advantages and disadvantages?"
  "Is there any history behind this?"
  "What should I read next to learn more?"
  "Can you compare it with something from everyday life?"
  "What happens if something goes wrong?"
  "That was helpful. Can you go into more detail about the first point?"
  "Are there any exceptions to that?"
  "How would I explain this to a friend in one sentence?"
  "What numbers or facts support this?"
  "Could you write a short quiz with three questions about this?"
  "What is a related topic I might find interesting?"
  "Can you correct anything you got wrong in your last answer?"
  "How has this changed in the last hundred years?"
  "Thanks! One more question: what is the single most important thing to remember?"
)

json_text() { python3 -c 'import json,sys; sys.stdout.write(json.load(sys.stdin)["text"])'; }

render_system() { printf '<|im_start|>system\n%s<|im_end|>\n' "$system"; }

# Check that our rendering equals the template's (same prompt tokens as `generate --chat`).
a=$("$dsa" "${margs[@]}" --system "$system" generate --chat "Hello" -n 1 --temp 0 --json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["prompt_tokens"])') || a="?"
b=$( { render_system; printf '<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n'; } |
    "$dsa" "${margs[@]}" generate - -n 1 --temp 0 --json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["prompt_tokens"])') || b="??"
if [ "$a" != "$b" ]; then
  echo "sample-chats: the ChatML rendering does not match the model's template ($a vs $b prompt tokens)" >&2
  exit 1
fi

mkdir -p "$out/train" "$out/heldout"
declare -A oldsrc=()
if [ -f "$out/chats.tsv" ]; then
  while IFS=$'\t' read -r f s; do [ "$f" = file ] || oldsrc["$f"]="$s"; done < "$out/chats.tsv"
fi
tsv="$out/chats.tsv.tmp"
printf 'file\tsource\n' > "$tsv"
keep=()
made=0 kept=0
t0=$(date +%s)
for ((c = 0; c < chats; c++)); do
  s=$((seed + c))
  split=train
  [ $((c % 8)) -eq 3 ] && split=heldout
  rel=$(printf '%s/chat-%04d.txt' "$split" "$c")
  keep+=("$rel")
  src="dsa-chat model=$modelid seed=$s turns=$turns n=$ntok temp=$temp"
  printf '%s\t%s\n' "$rel" "$src" >> "$tsv"
  if [ "$force" = 0 ] && [ -f "$out/$rel" ] && [ "${oldsrc[$rel]:-}" = "$src" ]; then
    kept=$((kept + 1))
    continue
  fi
  # deterministic choices: a small LCG seeded with s
  r=$(( (s * 1103515245 + 12345) % 2147483648 ))
  conv="$(render_system)"$'\n'
  used=" "
  for ((t = 0; t < turns; t++)); do
    if [ "$t" -eq 0 ]; then
      q="${openers[$((r % ${#openers[@]}))]}"
    else
      for _ in 1 2 3 4 5 6 7 8; do
        r=$(( (r * 1103515245 + 12345) % 2147483648 ))
        k=$(( (r / 65536) % ${#followups[@]} ))
        case "$used" in *" $k "*) continue ;; esac
        break
      done
      used="$used$k "
      q="${followups[$k]}"
    fi
    conv+=$(printf '<|im_start|>user\n%s<|im_end|>\n' "$q")$'\n'
    # $(...) strips trailing newlines, so the pieces above are joined with explicit ones
    js=$(printf '%s<|im_start|>assistant\n' "$conv" |
         "$dsa" "${margs[@]}" generate - -n "$ntok" --temp "$temp" --seed "$((s * 100 + t))" --json 2>/dev/null) ||
      { echo "sample-chats: generation failed (conversation $c, turn $t); keeping $t turns" >&2; break; }
    reply=$(printf '%s' "$js" | json_text; printf x)
    reply="${reply%x}"
    conv+="<|im_start|>assistant"$'\n'"$reply<|im_end|>"$'\n'
  done
  printf '%s' "$conv" > "$out/$rel.tmp"
  mv "$out/$rel.tmp" "$out/$rel"
  made=$((made + 1))
  echo "sample-chats: $rel ($(wc -c < "$out/$rel") bytes, $(( $(date +%s) - t0 )) s)" >&2
done
# conversations of an earlier run that this one no longer makes
for f in "$out"/train/chat-*.txt "$out"/heldout/chat-*.txt; do
  [ -e "$f" ] || continue
  rel="${f#"$out"/}"
  case " ${keep[*]} " in *" $rel "*) ;; *) rm -f "$f" ;; esac
done
if cmp -s "$tsv" "$out/chats.tsv"; then rm -f "$tsv"; else mv "$tsv" "$out/chats.tsv"; fi
echo "sample-chats: $made sampled, $kept kept, in $(( $(date +%s) - t0 )) s ($out)" >&2
python3 "$root/scripts/corpus/make-corpus.py" --out "$out" --manifest-only >/dev/null
