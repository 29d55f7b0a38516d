#!/usr/bin/env bash
# Issue 28's emoji runs on one machine, from nothing (docs/emoji-model-notes.md says why each
# step is what it is):
#
#   scripts/emoji_runs.sh data          # the dataset from the six pinned npm packages (~10-45 min)
#   scripts/emoji_runs.sh embed         # the training captions' MiniLM embeddings (~4 min)
#   scripts/emoji_runs.sh audit         # held-out rows absent from training (~30 s)
#   scripts/emoji_runs.sh judges        # the two fixed judges trained again into $E/judge2, one core
#                                       # each (~1.75 h): a check that the recipe gives the shipped
#                                       # ones (pixcade/weights/emoji-judges), which every check reads
#   scripts/emoji_runs.sh base32        # phase 0: the base stage at 32 px (configs/emoji-phase0-32.json),
#                                       # ~3.7x cheaper per image than at 64 px
#   scripts/emoji_runs.sh base32-shifted   # phase 0 on the cosine schedule with 4x the SNR
#                                       # (configs/emoji-phase0-32-shifted.json: the 64 px layout noise)
#   INIT=step-N scripts/emoji_runs.sh base   # phase 1: the 64 px base, started from phase 0's
#                                       # checkpoint step-N (INIT is needed only to start it;
#                                       # INIT_RUN=base32-shifted: from the shifted phase 0, a
#                                       # run of its own; give INIT_RUN to resume and check it too)
#   INIT=step-N scripts/emoji_runs.sh base-cosine025   # phase 1 on the cosine schedule with a
#                                       # quarter of the SNR (configs/emoji-phase1-cosine025.json:
#                                       # phase 0's layout noise at 64 px), from base32's step-N
#   INIT=step-N scripts/emoji_runs.sh base-grown   # phase 1 as base32's step-N grown by a 64 px
#                                       # level (`pixcade train grow`; configs/emoji-phase1-grown.json,
#                                       # cosine with a quarter of the SNR)
#   INIT=step-N scripts/emoji_runs.sh base-grown-decay   # phase 2: the grown run's step-N
#                                       # with the lr decayed to 0 over 3,000 steps
#                                       # (configs/emoji-phase2-grown-decay.json, a fresh data order)
#   INIT=step-N scripts/emoji_runs.sh base-grown-cycle   # phase 3: phase 2's step-N restarted at
#                                       # half its peak lr, decayed over 3,000 steps
#                                       # (configs/emoji-phase3-grown-cycle.json)
#   scripts/emoji_runs.sh sr            # the SR stage, 64 -> 256
#   scripts/emoji_runs.sh check-base step-N [sweep options]   # 60 val_cs prompts, base only
#   scripts/emoji_runs.sh check-base32[-shifted] step-N [sweep options] # the same for a 32 px base
#   scripts/emoji_runs.sh check-base-cosine025 step-N [sweep options]  # and for that phase 1
#   scripts/emoji_runs.sh check-base-grown[-decay|-cycle] step-N [sweep options]  # and for the grown ones
#   scripts/emoji_runs.sh check-sr step-N [eval options]      # PSNR on 60 val_cs rows (BASE_RUN:
#                                       # the base run it is assembled with, default base-grown-decay)
#   GUIDANCE=W scripts/emoji_runs.sh card-val BASE_RUN step-N step-M   # the card's val_cs and SR
#                                       # numbers for BASE_RUN's step-N with the SR stage's step-M
#                                       # (~1.5 h on two idle EPYC cores, 2026-12-07: SR choice 7 min,
#                                       # ablation 44, SR on all rows 37): the SR sampling choice (3 x 60 rows),
#                                       # the augmentation ablation (268 prompts, whole cascade, base at
#                                       # guidance W, static) and SR on all held-out rows, into
#                                       # $E/eval/CANDIDATE/; the base's guidance sweep is check-BASE_RUN's
#   scripts/emoji_runs.sh card-test     # the shipped model (pixcade/weights/emoji) on test_cs and
#                                       # test_attr, once per shipped model (~50 min), and its grid
#
# Everything lands under $PIXCADE_RUNS (default ~/pixcade-runs), outside the work tree; every
# step is safe to rerun (training resumes from its newest checkpoint, the judges resume, the
# sweep resumes by cell). The runs import a frozen copy of HEAD (emoji/code-REV): a run lives
# for hours and a worktree changes under it. Stop a training run with `kill -TERM` (it
# checkpoints first). THREADS sets the threads of a training run (default 2, both cores) or of a
# check (default 1, to run beside training; 2 when training is stopped).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
R=${PIXCADE_RUNS:-$HOME/pixcade-runs}
D=$R/emoji-data
E=$R/emoji

frozen_code() {
    local rev
    rev=$(git -C "$REPO" rev-parse --short HEAD)
    if [ ! -d "$E/code-$rev" ]; then
        mkdir -p "$E"
        git -C "$REPO" archive --prefix="code-$rev/" HEAD | tar -x -C "$E"
    fi
    echo "$E/code-$rev"
}
CODE=$(frozen_code)
px() { (cd "$CODE" && python -m pixcade.cli "$@"); }

run_name() {  # the run a mode means: `base` is phase 1 from INIT_RUN's phase 0 (default base32),
    # each its own run (folder, exports, checks), so give INIT_RUN on every call about it
    if [ "$1" = base ] && [ "${INIT_RUN:-base32}" != base32 ]; then echo "base-from-$INIT_RUN"; else echo "$1"; fi
}

run_dir() {  # run_dir RUN (as run_name names it) -> the run's folder
    case "$1" in
    base32) echo "$E/base32-phase0" ;;
    base32-shifted) echo "$E/base32-shifted-phase0" ;;
    base) echo "$E/base-phase1-from32" ;;  # $E/base-phase1 is the 64 px run from scratch, superseded
    base-from-base32-shifted) echo "$E/base-phase1-from32-shifted" ;;
    base-cosine025) echo "$E/base-phase1-cosine025-from32" ;;
    base-grown) echo "$E/base-phase1-grown-from32" ;;
    base-grown-decay) echo "$E/base-phase2-grown-decay" ;;
    base-grown-cycle) echo "$E/base-phase3-grown-cycle" ;;
    sr) echo "$E/sr-phase1" ;;
    *) echo "run_dir: no run named $1" >&2; exit 2 ;;
    esac
}

export_stage() {  # export_stage RUN step-N (RUN as run_name names it) -> prints the export folder
    local out="$E/exports/$1-${2#step-}"
    # (set -e does not reach into the $(...) that calls this, hence the explicit return)
    [ -d "$out" ] || px train export --run "$(run_dir "$1")" --checkpoint "$2" --out "$out" >&2 || return 1
    echo "$out"
}

cmd=${1:-}
shift || true
# One compound command ending in exit: bash parses it whole before running it, so editing this
# file while a run lasts (hours) cannot make bash read the new bytes at the old offset.
{
case "$cmd" in
data) px data emoji --out "$D" ;;
embed)
    OMP_NUM_THREADS=2 px embed --data "$D/base-64/train.jsonl" --encoder minilm --max-length 64 \
        --out "$E/embeddings" ;;
audit)
    mkdir -p "$E/audit"
    px data emoji-audit --data "$D" --held-out "$REPO/../shared/emoji/heldout.jsonl" --out "$E/audit/audit.json" ;;
judges)
    mkdir -p "$E/judge2"
    for seed in 0 1; do
        OMP_NUM_THREADS=1 px eval emoji train --data "$D" --out "$E/judge2/judge-w32-seed$seed.safetensors" \
            --steps 15000 --width 32 --seed "$seed" --threads 1 --checkpoints "$E/judge2/ckpt-seed$seed" \
            --report "$E/judge2/judge-w32-seed$seed.json" > "$E/judge2/seed$seed.log" 2>&1 &
    done
    wait ;;
base | sr | base32 | base32-shifted | base-cosine025 | base-grown | base-grown-decay | base-grown-cycle)
    # The run reads HEAD's configs (the frozen copy): an uncommitted edit would silently not apply.
    dirty=$(git -C "$REPO" status --porcelain -- configs)
    [ -z "$dirty" ] || { echo "emoji_runs.sh: uncommitted changes in configs/ (a run uses HEAD's; commit first): ${dirty//$'\n'/;}" >&2; exit 2; }
    # Each run's config, stage, data (phase 0 reads the 64 px set, resized) and, for a later
    # phase, the run it starts from (grown by one level when grow=1).
    init_run= grow=
    case "$cmd" in
    base32) config=configs/emoji-phase0-32.json stage=base data=$D/base-64/train.jsonl ;;
    base32-shifted) config=configs/emoji-phase0-32-shifted.json stage=base data=$D/base-64/train.jsonl ;;
    base) config=configs/emoji-phase1.json stage=base data=$D/base-64/train.jsonl init_run=${INIT_RUN:-base32} ;;
    base-cosine025) config=configs/emoji-phase1-cosine025.json stage=base data=$D/base-64/train.jsonl init_run=base32 ;;
    base-grown) config=configs/emoji-phase1-grown.json stage=base data=$D/base-64/train.jsonl init_run=base32 grow=1 ;;
    base-grown-decay) config=configs/emoji-phase2-grown-decay.json stage=base data=$D/base-64/train.jsonl init_run=base-grown ;;
    base-grown-cycle) config=configs/emoji-phase3-grown-cycle.json stage=base data=$D/base-64/train.jsonl init_run=base-grown-decay ;;
    sr) config=configs/emoji-phase1.json stage=sr data=$D/sr-256/train.jsonl ;;
    esac
    out=$(run_dir "$(run_name "$cmd")")
    start=()
    if [ -d "$out/checkpoints" ]; then
        start=(--resume)
    elif [ -n "$init_run" ]; then
        init=${INIT:?"$cmd starts from a checkpoint of $init_run: INIT=step-N scripts/emoji_runs.sh $cmd"}
        src=$(export_stage "$init_run" "$init")
        if [ -n "$grow" ]; then
            [ -d "$src-grown" ] || px train grow --from "$src" --out "$src-grown" > /dev/null
            src=$src-grown
        fi
        start=(--init-from "$src")
    fi
    OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2} px train --config "$config" \
        --stage "$stage" --data "$data" --embedding-cache "$E/embeddings" --out "$out" "${start[@]}" ;;
check-base | check-base32 | check-base32-shifted | check-base-cosine025 | check-base-grown | check-base-grown-decay | check-base-grown-cycle)
    step=${1:?$cmd needs a checkpoint name, e.g. step-00004000}
    shift
    name=$(run_name "${cmd#check-}")
    base=$(export_stage "$name" "$step")
    model="$E/candidates/$name-${step#step-}"
    [ -d "$model" ] || px assemble "$base" --out "$model"
    OMP_NUM_THREADS=${THREADS:-1} px eval emoji sweep --model "$model" --data "$D" --split val_cs \
        --stages base --limit "${LIMIT:-60}" --out "$E/base-checks/$name-${step#step-}${TAG:-}" "$@" ;;
check-sr)
    step=${1:?check-sr needs a checkpoint name, e.g. step-00006000}
    shift
    sr=$(export_stage sr "$step")
    # The PSNR check feeds the SR stage the true 64 px image, so the base it is assembled with
    # does not change the number; it pairs with the newest export of BASE_RUN (default: the
    # phase 2 base, the line the card ships), and the candidate's name says which.
    base_run=${BASE_RUN:-base-grown-decay}
    newest=$(ls -d "$E/exports/$base_run"-[0-9]* 2>/dev/null | sort | tail -1)
    [ -n "$newest" ] || { echo "check-sr: no export of $base_run to pair the SR stage with (run check-$base_run first)" >&2; exit 2; }
    model="$E/candidates/sr-${step#step-}-with-$(basename "$newest")"
    [ -d "$model" ] || px assemble "$newest" "$sr" --out "$model"
    OMP_NUM_THREADS=${THREADS:-1} px eval emoji sr --data "$D" --model "$model" --split val_cs --limit "${LIMIT:-60}" \
        --out "$E/sr-checks/sr-${step#step-}${TAG:-}.json" "$@" ;;
card-val)
    # The SR stage's sampling is chosen on the SR stage alone (given the true 64 px image), so its
    # choice and SR-on-all-rows hold for any base; the ablation runs the whole cascade.
    base_run=${1:?card-val needs the base run, its step and the SR step, e.g. base-grown-cycle step-00003000 step-00004798}
    base=$(export_stage "$base_run" "${2:?card-val needs the base step}")
    sr_step=${3:?card-val needs the SR step}
    sr=$(export_stage sr "$sr_step")
    model="$E/candidates/sr-${sr_step#step-}-with-$(basename "$base")"
    [ -d "$model" ] || px assemble "$base" "$sr" --out "$model"
    out="$E/eval/$(basename "$model")"
    mkdir -p "$out" "$E/sr-checks"
    export OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2}
    for s in "0.2 2" "0.3 3" "0.5 5"; do
        set -- $s
        json="$E/sr-checks/sr-${sr_step#step-}-start${1/./}-s$2.json"
        [ -f "$json" ] || px eval emoji sr --data "$D" --model "$model" --split val_cs --limit 60 \
            --set start="$1" --set steps="$2" --out "$json"
    done
    px eval emoji sweep --model "$model" --data "$D" --split val_cs --set base.guidance_weight="${GUIDANCE:-3}" \
        --set base.threshold=static --set sr.start=0.3 --set sr.steps=3 --vary sr.aug_level=0,0.1 --out "$out/ablation"
    [ -f "$out/sr.json" ] || px eval emoji sr --data "$D" --model "$model" --set start=0.3 --set steps=3 \
        --out "$out/sr.json" ;;
card-test)
    # Reads the shipped folder from the work tree, not the frozen copy: what ships is what is drawn,
    # committed or not, so its reports are filed under the weights' digest, not HEAD's.
    digest=$(cd "$REPO" && python -c 'import sys; from pixcade.eval.provenance import model_digest; print(model_digest(sys.argv[1])[:12])' pixcade/weights/emoji)
    out="$E/eval/shipped-$digest"
    mkdir -p "$out"
    export OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2}
    for split in test_cs test_attr; do
        px eval emoji sweep --model "$REPO/pixcade/weights/emoji" --data "$D" --split "$split" --out "$out/$split"
    done
    [ -f "$out/grid.png" ] || px eval emoji grid --model "$REPO/pixcade/weights/emoji" --data "$D" --split test_cs \
        --out "$out/grid.png" ;;
*)
    echo "usage: scripts/emoji_runs.sh data|embed|audit|judges|base32|base32-shifted|base|base-cosine025|base-grown[-decay|-cycle]|sr|check-base[-cosine025|-grown[-decay|-cycle]] STEP|check-base32[-shifted] STEP|check-sr STEP|card-val BASE_RUN STEP SR_STEP|card-test" >&2
    exit 2 ;;
esac
exit
}
