"""The released architectures, one module each; importing this registers them all.

cpu_bf16: CPU bf16 autocast measured faster at equal accuracy (benchmarks/RESULTS.md; 2-core
EPYC with avx512_bf16, torch 2.13): step time 1.5-2.9x shorter. Final accuracy, same
schedule, bf16 vs fp32: mlp test 90.37 vs 90.50 (seeds 0-2, bs 512, 10 epochs; val 90.33 vs
90.33; at equal *time* bf16 trains twice the epochs and wins), mlp-reg 90.59 vs 90.60 (seeds
0-2), cnn-fast 93.16 vs 93.20 (seed 0), cnn val 93.21 vs 93.23 / test 93.38 vs 93.48 (seeds
0-2, 10 epochs, 1.5x faster: 52.9 vs 79.0 s). resnet: not measured, so float32.
recipe: the preset measured best for the model (see trainlab.recipes); conv: channels_last.

Each factory checks its kwargs and builds; trainlab.models.factory sizes it (on the meta
device) before the real build, as it does anyone's factory.
"""

from trainlab.models.architectures import cnn, cnn_fast, mlp, mlp_reg, resnet  # noqa: F401  (they register)
