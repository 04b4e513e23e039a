#!/usr/bin/env bash
# Encode the bundled example into 3 layers, then decode it at every layer.
set -euo pipefail
cd "$(dirname "$0")/.."
GSVC=.venv/bin/gsvc
mkdir -p out
$GSVC encode examples/kodim03_384x256.png -o out/kodim03.gsv --preset fast --seed 0
for k in 1 2 3; do
  $GSVC decode out/kodim03.gsv --layers "$k" -o "out/kodim03_layers$k.png"
done
$GSVC decode out/kodim03.gsv --scale 2 -o out/kodim03_x2.png
$GSVC info out/kodim03.gsv
echo "decoded: out/kodim03_layers{1,2,3}.png (and a 2x render: out/kodim03_x2.png)"
