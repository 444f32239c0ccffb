#!/usr/bin/env bash
# The reproductions of docs/results.md, one command each (run from the repository root).
# Every validation writes a report folder under runs/reports/ (git-ignored); summarise them with
#   .venv/bin/python experiments/summarize_reports.py runs/reports/<folder> --metric <metric>
# Set STEP to run one part: STEP=resnet20 bash experiments/reproduce.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="nice -n 10 .venv/bin/python -m captum_gndi"
SHARED=../shared/data
CIFAR="--data cifar10 --data-dir $SHARED/cifar10"
STEP=${STEP:-all}
CHANNEL_DAMAGE=output_delta,accuracy_drop,loss_increase,kl  # output_delta first: the paper's metric

if [[ $STEP == all || $STEP == resnet18 ]]; then
  # (1) the paper's setting: ResNet-18, 7 epochs on 10% of CIFAR-10 (checkpoint outside git)
  [[ -f runs/resnet18_paper.pt ]] || nice -n 10 .venv/bin/python \
      experiments/train_resnet18_paper.py --data-dir $SHARED/cifar10 --out runs/resnet18_paper.pt
  for baseline in zero mean; do
    $RUN validate --model cifar-resnet18 --weights runs/resnet18_paper.pt $CIFAR --limit 256 \
        --kind branch --baseline $baseline --n-steps 4 --quiet \
        --out runs/reports/resnet18-branch-$baseline
    $RUN validate --model cifar-resnet18 --weights runs/resnet18_paper.pt $CIFAR --limit 128 \
        --kind conv --n-channels 300 --baseline $baseline --n-steps 4 \
        --damage $CHANNEL_DAMAGE --quiet --out runs/reports/resnet18-channel-$baseline
  done
fi

if [[ $STEP == all || $STEP == resnet20 || $STEP == resnet56 ]]; then
  # (2) well-trained networks: akamaster's CIFAR ResNet-20 and ResNet-56
  for depth in 20 56; do
    [[ $STEP == all || $STEP == resnet$depth ]] || continue
    weights=$(ls $SHARED/cifar_resnets/resnet$depth-*.th)
    limit=$([[ $depth == 20 ]] && echo 500 || echo 256)
    steps=$([[ $depth == 20 ]] && echo 8 || echo 4)
    for baseline in zero mean; do
      $RUN validate --model cifar-resnet$depth --weights "$weights" $CIFAR --limit $limit \
          --kind branch --baseline $baseline --n-steps $steps --quiet \
          --out runs/reports/resnet$depth-branch-$baseline
    done
    $RUN validate --model cifar-resnet$depth --weights "$weights" $CIFAR --limit 128 \
        --kind conv --n-channels 300 --baseline zero --n-steps 4 \
        --damage $CHANNEL_DAMAGE --quiet --out runs/reports/resnet$depth-channel-zero
  done
fi

if [[ $STEP == all || $STEP == minilm ]]; then
  # (3) all-MiniLM-L6-v2 on 200 sentence-polarity snippets: sublayers and whole blocks
  TEXT="--data sentences --data-dir $SHARED/text/sentence_polarity.zip --limit 200 --batch-size 50"
  $RUN validate --model minilm $TEXT --kind attention,mlp --n-steps 4 --quiet \
      --out runs/reports/minilm-sublayers-zero
  $RUN validate --model minilm $TEXT --kind block --n-steps 4 --quiet \
      --out runs/reports/minilm-blocks-zero
fi
