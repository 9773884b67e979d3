#!/usr/bin/env bash
# Issue 13's evaluation on real dev questions, every cell resumable:
#   base50     the prompted SmolLM2-135M: full_context, rag, static_summary, memagent and
#              atommem (compact prompts) on N_HOTPOT HotpotQA + N_OTHER each of 2Wiki and
#              MuSiQue questions at 50 documents (~7K tokens, ~14 sections of 512 tokens)
#   trained50  the trained AtomMem policy (POLICY) and, if MEMAGENT_POLICY is set, the
#              trained MemAgent-style policy (memagent@memagent_sft), on the same questions
#   base200 / trained200   the same on N_200 HotpotQA + N_200_OTHER each of the others at
#              200 documents (~30K tokens, ~58 sections; the call budget grows to read them)
#
#   bash launch/eval_real.sh                                # every stage, in that order
#   STAGES="base50" bash launch/eval_real.sh                 # some of them
#   python -m atommem_jax.eval.tables outputs/eval_real/*_50 --partial   # one table so far
#
# Each (stage, datasets) pair is its own output dir under RUNS: base_<datasets>_<docs> for
# the baselines, trained_<TAG>_<datasets>_<docs> for the trained policies, where TAG names
# the policies (by default the first 8 hex digits of each adapter file's sha256), so the
# baselines' episodes stay valid when the trained policy changes and a retrained policy gets
# its own dirs. A dir's episode store refuses another config (or code version): keep
# DATA_DIR and EVAL_FLAGS the same across reruns (DATA_DIR=../shared/data is a different
# value from the unset default, though the same files). Rerunning continues where a kill
# stopped it (the batch being run is redone). Every run uses configs/eval_trained_smollm2.py
# (512-token sections, prompts up to 7,680 tokens: rag's retrieved sections and
# full_context's document are not cut at 50 documents). On the 2 CPU cores of this project's machines base50 takes hours
# (full_context ~43 s a question); see docs/results.md for measured times.
#
# Environment (defaults in brackets): RUNS [outputs/eval_real]; STAGES [base50 trained50
# base200 trained200]; POLICY [the shipped adapter, atommem_jax/trained/...]; MEMAGENT_POLICY
# [unset: no trained MemAgent row]; TAG [from the adapters, above]; N_HOTPOT [100]; N_OTHER
# [30]; N_200 [20]; N_200_OTHER [10]; DATA_DIR [unset: ../shared/data]; EVAL_FLAGS (more
# --config.key=value flags for every stage, after the stage's own, so they override them);
# PYTHON [python].
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-outputs/eval_real}
STAGES=${STAGES:-base50 trained50 base200 trained200}
PY=${PYTHON:-python}
POLICY=${POLICY:-lora:atommem_jax/trained/smollm2_atommem.safetensors}
BASE_METHODS=full_context,rag,static_summary,memagent,atommem

tag_of() {  # the policies' names: an adapter file's sha256 prefix, else the source, sanitised
  local out= src file
  for src in "$POLICY" ${MEMAGENT_POLICY:+"$MEMAGENT_POLICY"}; do
    file=${src#lora:}
    if [[ $src == lora:* && -f $file ]]; then
      out+=$(sha256sum "$file" | cut -c1-8)-
    else
      out+=$(printf %s "$src" | tr -c 'A-Za-z0-9._' _)-
    fi
  done
  printf %s "${out%-}"
}
TAG=${TAG:-$(tag_of)}

evaluate() {  # output dir, datasets, questions per dataset, documents, flags...
  local out=$1 datasets=$2 n=$3 docs=$4
  shift 4
  echo "=== $out: $datasets x $n at $docs documents"
  "$PY" -m atommem_jax.eval --config=configs/eval_trained_smollm2.py \
    --config.output_dir="$out" --config.data.dataset="$datasets" --config.max_examples="$n" \
    --config.data.num_docs="$docs" ${DATA_DIR:+--config.data.data_dir="$DATA_DIR"} \
    "$@" ${EVAL_FLAGS:-}
}

base() {  # documents, HotpotQA questions, 2Wiki/MuSiQue questions, flags...
  local docs=$1 n=$2 n_other=$3
  shift 3
  local flags=(--config.model.source=smollm2 --config.method_models=
               --config.methods=$BASE_METHODS "$@")
  evaluate "$RUNS/base_hotpotqa_$docs" hotpotqa "$n" "$docs" "${flags[@]}"
  evaluate "$RUNS/base_2wiki_musique_$docs" 2wiki,musique "$n_other" "$docs" "${flags[@]}"
}

trained() {  # documents, HotpotQA questions, 2Wiki/MuSiQue questions, flags...
  local docs=$1 n=$2 n_other=$3
  shift 3
  local methods=atommem models=
  local budget=()
  if [[ -n ${MEMAGENT_POLICY:-} ]]; then
    methods=atommem,memagent@memagent_sft
    models="memagent_sft=$MEMAGENT_POLICY"
    # configs/smollm2_memagent_sft.py's scratchpad: rewrites of up to 320 tokens, shown up to
    # 1,000 characters; the eval config's 160 / 300 would cut the policy it trained.
    budget=(--config.sampling.max_new_tokens=320 --config.max_memory_chars=1000)
  fi
  local flags=(--config.model.source="$POLICY" --config.method_models="$models"
               --config.methods="$methods" "${budget[@]}" "$@")
  evaluate "$RUNS/trained_${TAG}_hotpotqa_$docs" hotpotqa "$n" "$docs" "${flags[@]}"
  evaluate "$RUNS/trained_${TAG}_2wiki_musique_$docs" 2wiki,musique "$n_other" "$docs" "${flags[@]}"
}

for stage in $STAGES; do
  case $stage in
    base50) base 50 "${N_HOTPOT:-100}" "${N_OTHER:-30}" ;;
    trained50) trained 50 "${N_HOTPOT:-100}" "${N_OTHER:-30}" ;;
    # ~58 sections of 512 tokens: the automatic budget (every section twice + queries).
    base200) base 200 "${N_200:-20}" "${N_200_OTHER:-10}" --config.env.max_calls=0 ;;
    trained200) trained 200 "${N_200:-20}" "${N_200_OTHER:-10}" --config.env.max_calls=0 ;;
    *) echo "unknown stage $stage (base50, trained50, base200, trained200)" >&2; exit 2 ;;
  esac
done
echo "=== one table: $PY -m atommem_jax.eval.tables $RUNS/*_50 $RUNS/*_200 [--partial]"
