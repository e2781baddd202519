#!/usr/bin/env bash
# The whole pipeline 01 -> 04 on the CPU demo preset: offline, a few minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")"
config=configs/demo.toml
python 01_preprocess.py --config $config "$@"
python 02_train_tokenizer.py --config $config "$@"
python 03_pretrain.py --config $config --restart "$@"   # --restart: a re-run of the demo starts over
# 04's 36 runs are independent: two processes share them out, one thread each (on 2 cores 1.5x faster than one
# process on two threads; results.csv is byte-identical, as each run is seeded on its own)
OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 04_finetune_nt.py --config $config "$@"
echo
echo "done. results table: out/demo/finetune/results.md   plot: out/demo/finetune/mcc.png"
echo "      pretraining loss: out/demo/loss.png   segment lengths: out/demo/segments/segment_lengths.png"
